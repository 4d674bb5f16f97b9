"""MLServer runtime for the TFLite model (MLServer ships none): a pool of LiteRT interpreters, no TensorFlow."""
import os

from cassava.shared.server.runtime import ImageClassifierRuntime

from .interpreter import load_tflite_classifier


class EdgeRuntime(ImageClassifierRuntime):
    tier = "edge"

    def load_classifier(self, uri: str, extra: dict):
        # Interpreter settings sit in model-settings `parameters.extra`; each batch in flight holds one interpreter.
        return load_tflite_classifier(
            uri, **self.spec_overrides(extra),
            num_threads=int(extra.get("num_threads") or 1),
            pool_size=int(extra.get("pool_size") or os.cpu_count() or 1),
            input_tensor=extra.get("input_tensor"), output_tensor=extra.get("output_tensor"),
        )
