"""Synthetic leaf photos for the offline stand-in model (numpy only, deterministic per seed).

Each class is drawn with its own symptom pattern on a randomly placed leaf, so a small CNN can learn them:
  cbb     angular dark-brown lesions and a browned margin (bacterial blight)
  cbsd    yellow-brown streaks along the lateral veins (brown streak)
  cgm     dense pale speckles (green mite feeding)
  cmd     yellow-green mottled mosaic patches (mosaic)
  healthy plain green leaf with veins
  unknown no leaf: soil, sky and random objects
These are drawings, not cassava photos: anything measured on them says "stand-in model, synthetic data".
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .labels import CROPNET_CLASSES
from .preprocess import resize_bilinear


def _smooth_noise(rng, size, cells):
    grid = rng.random((cells, cells, 1)).astype(np.float32)
    return resize_bilinear(grid, size)[..., 0]


def _background(rng, size):
    soil = np.array([110, 85, 60], np.float32) + rng.normal(0, 12, 3)
    image = np.empty((size, size, 3), np.float32)
    image[:] = soil
    image += (_smooth_noise(rng, size, 6)[..., None] - 0.5) * 60
    image += rng.normal(0, 6, (size, size, 1))
    return image


def _leaf_mask(rng, yy, xx, size):
    cy, cx = size / 2 + rng.uniform(-20, 20, 2)
    major, minor = rng.uniform(0.32, 0.45) * size, rng.uniform(0.18, 0.28) * size
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)  # along the midrib
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    mask = (u / major) ** 2 + (v / minor) ** 2 <= 1.0
    return mask, u, v, major, minor


def _veins(u, v, major, rng):
    midrib = np.abs(v) < 1.6
    spacing = rng.uniform(18, 26)
    lateral = np.abs(((u - np.abs(v) * 0.8) % spacing) - spacing / 2) < 1.0
    return midrib | lateral, spacing


@functools.lru_cache(maxsize=4)
def _grid(size):
    """Row and column coordinates as float32 [size, size] (read-only: shared by every drawing)."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid.flags.writeable = False
    return grid[0], grid[1]


def _with_noise(image, rng, sigma):
    """clip(image + N(0, sigma)) as uint8, summed into the noise array: the same values with fewer temporaries."""
    noisy = rng.normal(0, sigma, image.shape)
    noisy += image
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)


def draw_leaf(rng: np.random.Generator, cls: str, size: int = 224) -> np.ndarray:
    """One synthetic photo of class `cls` as uint8 RGB [size, size, 3]."""
    yy, xx = _grid(size)
    image = _background(rng, size)
    if cls == "unknown":
        sky = yy < rng.uniform(0, size * 0.6)
        image[sky] = np.array([120, 160, 215], np.float32) + rng.normal(0, 8, 3)
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, 45)]
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[blob] = rng.uniform(30, 230, 3)
        return _with_noise(image, rng, 4)

    mask, u, v, major, minor = _leaf_mask(rng, yy, xx, size)
    green = np.array([55, 135, 45], np.float32) + rng.normal(0, 10, 3)
    leaf = np.empty_like(image)
    leaf[:] = green
    leaf += (_smooth_noise(rng, size, 5)[..., None] - 0.5) * 25
    veins, spacing = _veins(u, v, major, rng)
    np.add(leaf, np.array([35, 40, 25], np.float32), out=leaf, where=veins[..., None])  # = leaf[veins] += ...

    if cls == "cmd":  # mosaic: blotchy yellow patches, irregular
        mottle = _smooth_noise(rng, size, rng.integers(9, 14))
        patches = mottle > np.quantile(mottle, rng.uniform(0.45, 0.6))
        leaf[patches] = leaf[patches] * 0.35 + np.array([205, 200, 70], np.float32) * 0.65
    elif cls == "cgm":  # green mite: many pale speckles
        speckles = rng.random((size, size)) < rng.uniform(0.06, 0.1)
        speckles |= np.roll(speckles, 1, axis=0) | np.roll(speckles, 1, axis=1)
        leaf[speckles] = np.array([215, 225, 165], np.float32) + rng.normal(0, 8, 3)
    elif cls == "cbsd":  # brown streak: yellow-brown bands along lateral veins
        bands = np.abs(((u - np.abs(v) * 0.8) % spacing) - spacing / 2) < rng.uniform(2.5, 4.0)
        bands &= np.abs(v) > 4
        leaf[bands] = np.array([165, 130, 45], np.float32) + rng.normal(0, 10, 3)
    elif cls == "cbb":  # blight: angular dark lesions + brown margin
        for _ in range(rng.integers(3, 7)):
            cu, cv = rng.uniform(-0.7, 0.7) * major, rng.uniform(-0.6, 0.6) * minor
            half = rng.uniform(6, 14)
            lesion = (np.abs(u - cu) + np.abs(v - cv) * rng.uniform(0.7, 1.4)) < half
            leaf[lesion] = np.array([85, 55, 30], np.float32) + rng.normal(0, 6, 3)
        margin = ((u / major) ** 2 + (v / minor) ** 2 > rng.uniform(0.6, 0.75))
        leaf[margin] = leaf[margin] * 0.3 + np.array([120, 80, 35], np.float32) * 0.7

    np.copyto(image, leaf, where=mask[..., None])  # = image[mask] = leaf[mask], without the gather
    image *= rng.uniform(0.8, 1.15)  # exposure
    return _with_noise(image, rng, 3)


def draw_class(per_class: int, seed: int, class_index: int, cls: str, size: int = 224):
    """The images of one class: each class has its own random stream, so classes can be drawn in any order."""
    rng = np.random.default_rng([seed, class_index])
    for _ in range(per_class):
        yield draw_leaf(rng, cls, size)


SPLITS = {"train": (100, 1), "validation": (30, 2)}  # images per class, seed


def ensure_dataset(root, splits=SPLITS, classes=CROPNET_CLASSES, workers=None) -> None:
    """Write the synthetic photos as JPEG class folders under root/<split>/<class>/ (once; marked done).

    One job per split and class, spread over `workers` child Pythons (default: one per core; 1 = in this process,
    as before): drawing is numpy on one core, and took a third of the stand-in's build. Plain child processes,
    not multiprocessing: its spawn re-runs the caller's main script, and a fork would copy whatever threads
    (TensorFlow's) the caller already runs. Each class has its own random stream: the photos do not depend on
    how the jobs are spread."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(root)
    jobs = [[str(root / split / cls), split, seed, class_index, cls, per_class]
            for split, (per_class, seed) in splits.items() if not (root / split / ".complete").exists()
            for class_index, cls in enumerate(classes)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers > 1:
        code = "import json, sys; from cassava.shared.synthetic import write_classes as w; w(json.loads(sys.argv[1]))"
        children = [subprocess.Popen([sys.executable, "-c", code, json.dumps(jobs[i::workers])], stderr=subprocess.PIPE)
                    for i in range(workers)]
        for child in children:
            _, err = child.communicate()
            if child.returncode:
                lines = err.decode(errors="replace").strip().splitlines() or [f"exit code {child.returncode}"]
                raise RuntimeError(f"drawing the synthetic photos failed: {lines[-1]}")
    else:
        write_classes(jobs)
    for split in {job[1] for job in jobs}:
        (root / split / ".complete").write_text("ok\n")


def write_classes(jobs) -> None:
    """Draw and save [folder, split, seed, class_index, class, per_class] jobs (the body of ensure_dataset)."""
    from pathlib import Path

    from PIL import Image

    for folder, split, seed, class_index, cls, per_class in jobs:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(draw_class(per_class, seed, class_index, cls)):
            # JPEG, as from a phone: the stand-in is trained and tested on decoded JPEGs, like real photos.
            Image.fromarray(image).save(folder / f"synthetic-{split}-{cls}-{index:03d}.jpg", quality=92)
