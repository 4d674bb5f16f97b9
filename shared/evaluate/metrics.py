"""Classification metrics for the cloud/edge comparison, in plain numpy (no scikit-learn, no TensorFlow).

Labels are class indices into one class list. Conventions follow scikit-learn's defaults so the numbers can be
checked against it: a precision or recall of 0/0 is reported as None (undefined) and counts as 0 in F1, and
macro-F1 averages over the classes that occur in the truth or the predictions.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple:
    """Wilson score interval for a proportion (e.g. 7/10 -> (0.3968, 0.8922) at 95%); (nan, nan) for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} is outside 0..{n}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] as int64 [C, C]."""
    y_true, y_pred = _pair(y_true, y_pred)
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None


def per_class(matrix: np.ndarray, class_names: Sequence[str]) -> List[Dict]:
    """Precision, recall, F1 and support per class from a confusion matrix (None where 0/0)."""
    matrix = np.asarray(matrix)
    rows = []
    for i, name in enumerate(class_names):
        true_positive = int(matrix[i, i])
        support = int(matrix[i, :].sum())
        predicted = int(matrix[:, i].sum())
        precision = _ratio(true_positive, predicted)
        recall = _ratio(true_positive, support)
        p, r = precision or 0.0, recall or 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                     "support": support, "predicted": predicted})
    return rows


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth or the predictions (scikit-learn's `average='macro'`)."""
    matrix = np.asarray(matrix)
    rows = per_class(matrix, [str(i) for i in range(len(matrix))])
    present = [row["f1"] for row in rows if row["support"] or row["predicted"]]
    return float(np.mean(present)) if present else float("nan")


def agreement(pred_a: Sequence[int], pred_b: Sequence[int]) -> tuple:
    """(number of images where both predict the same class, fraction)."""
    pred_a, pred_b = _pair(pred_a, pred_b)
    same = int(np.sum(pred_a == pred_b))
    return same, (same / len(pred_a) if len(pred_a) else float("nan"))


def probability_delta(probs: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """How far one model's probabilities are from a reference's: mean and max |Δp| over all images and classes,
    and the mean |Δp| of the reference's top class."""
    probs = np.asarray(probs, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if probs.shape != reference.shape:
        raise ValueError(f"probability shapes differ: {probs.shape} vs {reference.shape}")
    if not probs.size:
        return {"mean_abs": float("nan"), "max_abs": float("nan"), "mean_abs_top": float("nan")}
    delta = np.abs(probs - reference)
    top = reference.argmax(axis=1)
    return {"mean_abs": float(delta.mean()), "max_abs": float(delta.max()),
            "mean_abs_top": float(delta[np.arange(len(top)), top].mean())}


def percentiles_ms(seconds: Sequence[float], points=(50, 95)) -> Dict[str, float]:
    """Latency percentiles in milliseconds, e.g. {'p50': 3.1, 'p95': 4.0}."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if not values.size:
        return {f"p{p}": float("nan") for p in points}
    return {f"p{p}": float(np.percentile(values, p)) for p in points}


def classification_summary(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> Dict:
    """Everything the report shows about one model's predictions against the labels."""
    y_true, y_pred = _pair(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    correct = int(np.trace(matrix))
    n = int(matrix.sum())
    low, high = wilson_interval(correct, n)
    return {
        "n": n, "correct": correct, "accuracy": correct / n if n else float("nan"),
        "accuracy_ci95": [low, high], "macro_f1": macro_f1(matrix),
        "per_class": per_class(matrix, class_names), "confusion": matrix.tolist(),
    }


def _pair(a, b):
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} labels but {len(b)} predictions")
    return a, b
