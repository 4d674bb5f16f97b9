"""Prediction grid: each image with its predicted and true label, green when right, red when wrong."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..labels import display_name


def plot_predictions(images: Sequence[np.ndarray], records: Sequence[dict], title: str, out_path,
                     max_images: int = 16, columns: int = 4) -> Optional[str]:
    """Save a grid of up to `max_images` (image, record) pairs as PNG; returns the path, or None if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(im, r) for im, r in zip(images, records) if im is not None and r.get("prediction")][:max_images]
    if not pairs:
        return None
    columns = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    right = labelled = 0
    for ax, (image, record) in zip(axes.flat, pairs):
        ax.imshow(image)
        truth = record.get("label")
        predicted = record["prediction"]
        text = f"{display_name(predicted)} ({record['probability']:.0%})"
        if truth is None:
            color = "black"
        else:
            labelled += 1
            right += truth == predicted
            color = "green" if truth == predicted else "red"
            text += f"\ntrue: {display_name(truth)}"
        ax.set_title(text, color=color, fontsize=9)
    summary = f"{right}/{labelled} right" if labelled else "no labels"
    fig.suptitle(f"{title}\n{summary}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return str(out_path)
