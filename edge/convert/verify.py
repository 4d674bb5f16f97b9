"""Does the TFLite copy answer like its source? Top-1 agreement on held-out images, and when to refuse it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cassava.shared.formatting import count_text

BATCH = 32


class Held:
    """The held-out images: pixels, labels, and the source model's predictions on them (computed once)."""

    def __init__(self, pixels, labels, expected):
        self.pixels, self.labels, self.expected = pixels, labels, expected


def predictions(model, pixels, what: str, progress: bool) -> np.ndarray:
    """Probabilities for uint8 `pixels`, in batches, through the model's own pixel range."""
    from cassava.shared.evaluate.measure import predict_batches
    from cassava.shared.preprocess import to_model_input

    probs, _ = predict_batches(model, pixels, BATCH, f"verifying ({what})", progress, warmup=False,
                               prepare=lambda batch: to_model_input(batch, model.spec.input_scale), leave=False)
    return probs


def verify(held: Held, tflite, class_names, progress: bool = True) -> dict:
    """Top-1 agreement of the TFLite copy with the source's predictions, with its 95% Wilson interval.
    `probabilities`: the copy's answers (not JSON; the escalation threshold is chosen from them)."""
    from cassava.shared.evaluate.metrics import wilson_interval

    expected, labels = held.expected, held.labels
    got = predictions(tflite, held.pixels, "TFLite copy", progress)
    finite = np.all(np.isfinite(got), axis=1)
    agree = int(np.sum((expected.argmax(1) == got.argmax(1)) & finite))
    diff = np.abs(got - expected)
    images = len(held.pixels)
    result = {"images": images, "agree": agree, "top1_agreement": agree / images,
              "agreement_ci95": list(wilson_interval(agree, images)),
              "non_finite_outputs": int(np.sum(~finite)),
              "max_abs_diff": float(diff.max()) if finite.all() else None,
              "mean_abs_diff": float(diff.mean()) if finite.all() else None, "probabilities": got}
    known = [i for i, label in enumerate(labels) if label in class_names]
    if known:
        truth = np.array([class_names.index(labels[i]) for i in known])
        result["labelled"] = len(known)
        result["source_right"] = int(np.sum(expected[known].argmax(1) == truth))
        result["tflite_right"] = int(np.sum(got[known].argmax(1) == truth))
    return result


def agreement_text(verification: dict) -> str:
    """'141/150 = 94.0% (95% CI 89.0%-96.8%)'."""
    return count_text(verification["agree"], verification["images"], verification["agreement_ci95"])


def refusal(verification: dict, min_agreement: float, ops) -> Optional[str]:
    """Why the copy must not be used, or None. Agreement is judged by its interval: refused only when even the top
    of the 95% interval is below the minimum, so a healthy copy is not refused for the noise of a small sample."""
    if verification["non_finite_outputs"]:
        why = (f"the TFLite copy returns NaN or infinite scores on {verification['non_finite_outputs']} of "
               f"{verification['images']} images")
        if {"VAR_HANDLE", "READ_VARIABLE"} & set(ops):
            why += (" and reads variables at run time (VAR_HANDLE): a Keras 3 model saved with tf.saved_model.save? "
                    "export it with model.export(path) and convert that")
        return why
    if verification["agreement_ci95"][1] < min_agreement:
        return (f"top-1 agreement with the source is {agreement_text(verification)}, wholly below --min-agreement "
                f"{min_agreement:.0%}")
    return None


def saved_model_sizes(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    variables = sum(p.stat().st_size for p in files if "variables" in p.relative_to(path).parts)
    return {"source_variables_bytes": variables, "source_saved_model_bytes": sum(p.stat().st_size for p in files)}
