"""MLServer runtime for the TFLite model (MLServer ships none): a pool of LiteRT interpreters, no TensorFlow."""
import os

from cassava.shared.runtime import ImageClassifierRuntime

from .interpreter import load_tflite_classifier


class EdgeRuntime(ImageClassifierRuntime):
    tier = "edge"

    def load_classifier(self, uri: str, extra: dict):
        # Spec overrides and interpreter settings may sit in model-settings `parameters.extra`.
        classes = extra.get("classes")
        if isinstance(classes, str):
            classes = tuple(c.strip() for c in classes.split(","))
        pool_size = int(extra.get("pool_size") or os.cpu_count() or 1)
        # Each batch in flight holds one interpreter: by default run as many batches at once as there are
        # interpreters (ImageClassifierRuntime.load reads concurrent_batches from this same dict after this call).
        extra.setdefault("concurrent_batches", pool_size)
        return load_tflite_classifier(
            uri, input_scale=extra.get("input_scale"), classes=classes,
            num_threads=int(extra.get("num_threads") or 1), pool_size=pool_size,
            input_tensor=extra.get("input_tensor"), output_tensor=extra.get("output_tensor"),
        )
