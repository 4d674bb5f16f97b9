"""MLServer runtime for the full TensorFlow model (TF Hub CropNet, a local SavedModel, or the stand-in)."""
from cassava.shared.runtime import ImageClassifierRuntime

from .model import load_tf_classifier


class CloudRuntime(ImageClassifierRuntime):
    tier = "cloud"

    def load_classifier(self, uri: str, extra: dict):
        # Spec overrides may sit in model-settings `parameters.extra`, beside the model's own cassava-model.json.
        classes = extra.get("classes")
        if isinstance(classes, str):
            classes = tuple(c.strip() for c in classes.split(","))
        return load_tf_classifier(uri, input_scale=extra.get("input_scale"), classes=classes)
