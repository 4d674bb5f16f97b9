"""`cassava predict` / `python -m cassava.client`: classify images and plot predictions against labels.

The flow reads straight: image -> preprocess (shared) -> encode (shared) -> transport -> runtime -> decode -> label.
Modes: `--in-process` runs the model here (like the tutorial's app.py).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .data import Sample, describe, load_samples
from .errors import BadImage, CassavaError
from .labels import display_name, parse_class_list
from .preprocess import preprocess
from .spec import CROPNET_HANDLE, STANDIN_NOTE

RECORD_KEYS = ("file", "label", "prediction", "probability", "tier", "latency_ms")


class InProcessBackend:
    """The model in this process: TF for SavedModels and TF Hub handles, the TFLite interpreter for .tflite."""

    tier = "in-process"

    def __init__(self, model: str, input_scale=None, classes=None):
        from .classifier import load_classifier

        self.classifier = load_classifier(model, input_scale=input_scale, classes=classes)
        self.spec = self.classifier.spec
        self.title = self.spec.title

    def classify(self, pixels: np.ndarray, samples: List[Sample]):
        """-> (probabilities [N, C], class names, tier per image)."""
        from .classifier import predict_pixels

        return predict_pixels(self.classifier, pixels), self.spec.class_names, [self.tier] * len(pixels)


def add_arguments(parser):
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--in-process", action="store_true", help="run the model in this process (default)")
    parser.add_argument("--model", default=CROPNET_HANDLE,
                        help="TF Hub handle (default: CropNet), SavedModel dir, .tflite or converted dir, or 'standin' "
                             "(offline stand-in, synthetic data)")
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="tfds:cassava/validation, a folder with one sub-folder per class, image files, or "
                             "'standin' (the stand-in's synthetic photos)")
    parser.add_argument("-n", type=int, default=16, help="classify the first N images (default 16; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call / request")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0), help="model pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list, help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
    parser.add_argument("--plot", type=Path, help="save the prediction grid (PNG) here")
    parser.add_argument("--json", type=Path, help="save one record per image (JSON list) here")
    parser.add_argument("--csv", type=Path, help="save one record per image (CSV) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def make_backend(args):
    return InProcessBackend(args.model, input_scale=args.input_scale, classes=args.classes)


def classify_samples(backend, samples: List[Sample], batch_size: int, progress: bool = True):
    """Preprocess, classify and label every sample; a bad image becomes a record with an `error`, never a gap.

    Returns (records, thumbnails) in sample order.
    """
    from tqdm import tqdm

    records, thumbnails = [], []
    size = backend.spec.input_size
    bar = tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="classifying")
    for start in range(0, len(samples), max(1, batch_size)):
        chunk = samples[start:start + batch_size]
        good, pixels = [], []
        for sample in chunk:
            try:
                pixels.append(preprocess(sample.source, size))
                good.append(sample)
            except BadImage as exc:
                print(f"skipped {sample.name}: {exc}", file=sys.stderr)
        results = {}
        if good:
            batch = np.stack(pixels)
            started = time.perf_counter()
            probabilities, class_names, tiers = backend.classify(batch, good)
            latency_ms = (time.perf_counter() - started) * 1000.0 / len(good)
            for sample, image, probs, tier in zip(good, batch, probabilities, tiers):
                best = int(np.argmax(probs))
                results[id(sample)] = (image, {
                    "file": sample.name, "label": sample.label, "prediction": class_names[best],
                    "probability": round(float(probs[best]), 6), "tier": tier, "latency_ms": round(latency_ms, 3),
                    "probabilities": {c: round(float(p), 6) for c, p in zip(class_names, probs)},
                })
        for sample in chunk:
            image, record = results.get(id(sample), (None, None))
            if record is None:
                record = {"file": sample.name, "label": sample.label, "prediction": None, "probability": None,
                          "tier": None, "latency_ms": None, "error": "unreadable image"}
            records.append(record)
            thumbnails.append(image)
        bar.update(len(chunk))
    bar.close()
    return records, thumbnails


def summarize(records, title: str, tier: str) -> str:
    done = [r for r in records if r.get("prediction")]
    failed = len(records) - len(done)
    labelled = [r for r in done if r["label"] is not None]
    text = f"{len(done)} images classified"
    if labelled:
        right = sum(r["label"] == r["prediction"] for r in labelled)
        text += f", {right}/{len(labelled)} right ({right / len(labelled):.1%})"
    if failed:
        text += f", {failed} failed (reported above)"
    return f"{text}; model: {title}; tier: {tier}"


def top_k_text(record: dict, k: int = 3) -> str:
    """The classic Raspberry Pi classifier output: top guesses with display names, and the time it took."""
    ranked = sorted(record["probabilities"].items(), key=lambda kv: kv[1], reverse=True)[:k]
    lines = [f"{record['file']}  ({record['latency_ms']:.1f} ms, {record['tier']})"]
    lines += [f"  {i}. {display_name(name):<22} {name:<8} {p:6.1%}" for i, (name, p) in enumerate(ranked, 1)]
    return "\n".join(lines)


def write_outputs(records, thumbnails, title: str, tier: str, plot: Optional[Path], json_path: Optional[Path],
                  csv_path: Optional[Path]):
    public = [{k: r.get(k) for k in RECORD_KEYS} | ({"error": r["error"]} if r.get("error") else {}) for r in records]
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(public, indent=2) + "\n")
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(RECORD_KEYS) + ["error"])
            writer.writeheader()
            writer.writerows(public)
    if plot:
        from .plotting import plot_predictions

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_predictions(thumbnails, records, f"{title} — tier: {tier}", plot)


def run(args) -> int:
    if args.n < 0:
        raise CassavaError("-n must be 0 (all) or more")
    if args.batch_size < 1:
        raise CassavaError("--batch-size must be at least 1")
    samples = load_samples(args.data, args.n or None)
    backend = make_backend(args)
    records, thumbnails = classify_samples(backend, samples, args.batch_size, progress=not args.quiet)
    title = backend.title
    if "standin" in describe(args.data) and STANDIN_NOTE not in title:
        title = f"{title} ({STANDIN_NOTE})"
    write_outputs(records, thumbnails, title, backend.tier, args.plot, args.json, args.csv)
    done = [r for r in records if r.get("prediction")]
    if len(samples) == 1 and done:
        print(top_k_text(done[0]))
    print(summarize(records, title, backend.tier))
    for label, path in (("plot", args.plot), ("json", args.json), ("csv", args.csv)):
        if path:
            print(f"{label}: {path}")
    return 0 if done else 1


def main(argv=None) -> int:
    import argparse

    from cassava.cli import main as cli_main

    return cli_main(["predict", *(sys.argv[1:] if argv is None else argv)])
