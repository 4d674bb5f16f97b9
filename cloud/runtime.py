"""MLServer runtime for the full TensorFlow model (TF Hub CropNet, a local SavedModel, or the stand-in)."""
from cassava.shared.server.runtime import ImageClassifierRuntime

from .model import load_tf_classifier


class CloudRuntime(ImageClassifierRuntime):
    tier = "cloud"

    def load_classifier(self, uri: str, extra: dict):
        return load_tf_classifier(uri, **self.spec_overrides(extra))
