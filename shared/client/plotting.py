"""Prediction grid: each image with its predicted and true label, green when right, red when wrong; an image the
cloud settled for an escalating edge is framed in blue and says so.

A readable grid holds 16 images, however many were classified: the mistakes come first (they are what a person
checks), then the rest in order, and the title says how many images the grid leaves out."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..labels import display_name
from ..policy import UNKNOWN

CLOUD_COLOR = "#1f5fbf"  # the frame of a cloud-settled image


def grid_selection(images: Sequence[np.ndarray], records: Sequence[dict], max_images: int = 16):
    """-> ((image, record) pairs to show, mistakes first; caption: right/labelled over ALL classified images and
    how many the grid leaves out)."""
    classified = [(im, r) for im, r in zip(images, records) if im is not None and r.get("prediction")]

    def wrong(record):
        return record.get("label") is not None and record["label"] != record["prediction"]

    mistakes = [p for p in classified if wrong(p[1])]
    pairs = (mistakes + [p for p in classified if not wrong(p[1])])[:max_images]
    labelled = [r for _, r in classified if r.get("label") is not None]
    right = sum(r["label"] == r["prediction"] for r in labelled)
    caption = f"{right}/{len(labelled)} right" if labelled else "no labels"
    unknown = sum(r["prediction"] == UNKNOWN for _, r in classified)
    if unknown:
        caption += f"; {unknown} unknown (not like a cassava leaf)"
    settled = sum(r.get("answered_by") == "cloud" for _, r in classified)
    if settled:
        caption += f"; {settled} settled by the cloud (blue frame)"
    if len(classified) > len(pairs):
        order = "mistakes first" if mistakes else "the first"
        left_out = len(classified) - len(pairs)
        caption += f"; showing {len(pairs)} of {len(classified)} images ({order}), {left_out} not shown"
    return pairs, caption


def plot_predictions(images: Sequence[np.ndarray], records: Sequence[dict], title: str, out_path,
                     max_images: int = 16, columns: int = 4) -> Optional[str]:
    """Save a grid of up to `max_images` (image, record) pairs as PNG; returns the path, or None if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, summary = grid_selection(images, records, max_images)
    if not pairs:
        return None
    columns = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, record) in zip(axes.flat, pairs):
        ax.imshow(image)
        truth = record.get("label")
        predicted = record["prediction"]
        text = f"{display_name(predicted)} ({record['probability']:.0%})"
        if truth is None:
            color = "black"
        else:
            color = "green" if truth == predicted else "red"
            text += f"\ntrue: {display_name(truth)}"
        if record.get("answered_by") == "cloud":
            text += "\nsettled by the cloud"
            ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=CLOUD_COLOR,
                                       linewidth=4, clip_on=False))
        ax.set_title(text, color=color, fontsize=9)
    fig.suptitle(f"{title}\n{summary}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return str(out_path)
