"""`cassava compare` / `python -m cassava.compare`: the accuracy comparison of the cloud model and its TFLite copies.

One labelled data set, preprocessed ONCE (decode -> resize -> uint8, the shared path), and the very same pixels fed
to the full TF model and to every TFLite variant. Per model: accuracy with a 95% Wilson interval, macro-F1,
per-class precision/recall, confusion matrix, top-1 agreement and mean |Δp| against the cloud model, size on disk,
per-image latency p50/p95 at 1 thread and at all threads, and images/s. Written as report.md, report.json and PNGs.

Without `--edge-model`, the cloud model is converted here (int8, dynamic, float16) by the edge tier's `convert`
into OUT/edge-models/ (conversion.py), and the report says which images calibrated int8.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..arguments import add_model_spec_arguments
from ..data import describe, is_standin_data, load_samples, preprocess_samples
from ..errors import CassavaError
from ..formatting import count_text, size_text
from ..spec import CROPNET_HANDLE, STANDIN_NOTE, model_kind
from .conversion import conversion_notes, conversion_plan, convert_variants  # noqa: F401 (conversion_plan: API)
from .entries import edge_entries, load_cloud, via_entries
from .rejection import rejection_lines, rejection_table

DEFAULT_VARIANTS = ("int8", "dynamic", "float16")


def add_arguments(parser):
    parser.add_argument("--cloud-model", default=CROPNET_HANDLE,
                        help="the reference: TF Hub handle, SavedModel dir, or 'standin'")
    parser.add_argument("--edge-model", action="append", metavar="DIR_OR_TFLITE",
                        help="a TFLite copy (.tflite or a `cassava convert` folder); repeat for several. "
                             "Default: convert the cloud model to " + ", ".join(DEFAULT_VARIANTS)
                             + " in OUT/edge-models/")
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="labelled images: a folder with one sub-folder per class, tfds:cassava/validation, or "
                             "'standin' (the stand-in's synthetic validation photos)")
    parser.add_argument("--out", type=Path, default=Path("out/compare"), help="report folder")
    parser.add_argument("-n", type=int, default=0, help="use the first N images (0 = all)")
    add_model_spec_arguments(parser, whose="the cloud model's")
    parser.add_argument("--calibration", nargs="+", metavar="DATA",
                        help="images that calibrate the int8 conversion when no --edge-model is given "
                             "(default: the stand-in's synthetic train split for the stand-in; otherwise the first "
                             "half of the evaluation images, which the report flags loudly)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="variants to convert when no --edge-model is given")
    parser.add_argument("--via", metavar="NAME=URL[,NAME=URL]",
                        help="compare running servers instead of in-process models, e.g. local=http://127.0.0.1:8080,"
                             "edge=http://127.0.0.1:9080 (the first is the reference)")
    parser.add_argument("--latency-images", type=int, default=40,
                        help="images timed one at a time per model and thread count")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call for the accuracy pass")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclasses.dataclass
class CompareOptions:
    """What `cassava compare` is asked to do (the command's flags, by the same names)."""
    data: Sequence[str]
    cloud_model: str = CROPNET_HANDLE
    edge_model: Optional[Sequence[str]] = None
    out: Path = Path("out/compare")
    n: int = 0
    input_scale: Optional[float] = None
    classes: Optional[Sequence[str]] = None
    calibration: Optional[Sequence[str]] = None
    variants: str = ",".join(DEFAULT_VARIANTS)
    via: Optional[str] = None
    latency_images: int = 40
    batch_size: int = 16
    plots: bool = True
    quiet: bool = False

    @classmethod
    def from_args(cls, args) -> "CompareOptions":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name != "plots"}
        return cls(**values, plots=not args.no_plots)


def score(y_true, probs_by_name: Dict[str, np.ndarray], reference: str, class_names) -> List[Dict]:
    """The numbers for each model (in the dict's order): accuracy, CI, F1, per-class, confusion, and agreement
    and |Δp| against the reference model's probabilities. Pure: no models, no files."""
    from .metrics import agreement, classification_summary, probability_delta, wilson_interval

    reference_probs = np.asarray(probs_by_name[reference])
    rows = []
    for name, probs in probs_by_name.items():
        probs = np.asarray(probs)
        row = {"name": name, **classification_summary(y_true, probs.argmax(axis=1), class_names),
               "agreement": None, "prob_delta": None}
        if name != reference:
            same, fraction = agreement(reference_probs.argmax(axis=1), probs.argmax(axis=1))
            row["agreement"] = {"same": same, "n": len(probs), "fraction": fraction,
                                "ci95": list(wilson_interval(same, len(probs)))}
            row["prob_delta"] = probability_delta(probs, reference_probs)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- the steps


def check_arguments(options) -> None:
    if options.n < 0:
        raise CassavaError("-n must be 0 (all) or more")
    if options.batch_size < 1 or options.latency_images < 0:
        raise CassavaError("--batch-size must be at least 1 and --latency-images at least 0")


def labelled_samples(options, notes: List[str]):
    samples = load_samples(options.data, options.n or None)
    labelled = [s for s in samples if s.label is not None]
    if not labelled:
        raise CassavaError(f"--data {describe(options.data)}: no labelled images "
                           "(give a folder with one sub-folder per class)")
    if len(labelled) < len(samples):
        notes.append(f"{len(samples) - len(labelled)} unlabelled image(s) ignored.")
    return labelled


def models_to_compare(options, notes: List[str], progress: bool):
    """-> (entries, the reference first; how they run; which images calibrated int8)."""
    if options.via:
        entries = via_entries(options.via, options.classes)
        return entries, "running servers over HTTP: " + ", ".join(f"{e.name} = {e.path}" for e in entries), None
    cloud = load_cloud(options.cloud_model, options.input_scale, options.classes)
    edge_paths = list(options.edge_model) if options.edge_model else \
        convert_variants(options, Path(options.out) / "edge-models", progress)
    entries = [cloud] + edge_entries(edge_paths, cloud)
    calibration_text, warnings = conversion_notes(entries, describe(options.data))
    notes += warnings
    return (entries, "in this process (TensorFlow for the cloud model, the LiteRT interpreter for the TFLite copies)",
            calibration_text)


def class_list(entries, labelled, notes: List[str]) -> List[str]:
    """The reference's classes, then any label no model can output (such images are always wrong)."""
    cloud = entries[0]
    class_names = tuple(cloud.spec.class_names)
    for entry in entries[1:]:
        if tuple(entry.spec.class_names) != class_names:
            raise CassavaError(f"{entry.name} ({entry.path}) has classes {','.join(entry.spec.class_names)} but the "
                               f"cloud model has {','.join(class_names)}: not copies of the same model")
    extra_labels = sorted({s.label for s in labelled} - set(class_names))
    if extra_labels:
        notes.append(f"label(s) {', '.join(extra_labels)} are not among the models' classes: "
                     "those images count as wrong.")
    return list(class_names) + extra_labels


def read_pixels(labelled, entries, notes: List[str], progress: bool):
    """Each image decoded and resized once per input size the models take."""
    sizes = sorted({e.spec.input_size for e in entries})
    kept, pixels, skipped = preprocess_samples(labelled, sizes, progress=progress)
    for line in skipped:
        print(line, file=sys.stderr)
    if skipped:
        notes.append(f"{len(skipped)} unreadable image(s) skipped (listed on stderr).")
    if not kept:
        raise CassavaError("no readable labelled images")
    return kept, pixels, sizes


def _model_input(entry, pixels: np.ndarray) -> np.ndarray:
    from ..preprocess import to_model_input

    if getattr(entry.classifier, "raw_pixels", False):
        return pixels
    return to_model_input(pixels, entry.spec.input_scale)


def run_models(entries, pixels, options, progress: bool):
    """-> (a result row per model, probabilities by model name): the accuracy pass, then the timing."""
    from .latency import measure_latency, server_latency
    from .measure import predict_batches

    results, probs_by_name = [], {}
    for entry in entries:
        x = _model_input(entry, pixels[entry.spec.input_size])
        probs, images_per_s = predict_batches(entry.classifier, x, options.batch_size, entry.name, progress)
        probs_by_name[entry.name] = probs
        timed = x[:options.latency_images]
        latency = None
        if options.latency_images and not options.via:
            if progress:
                print(f"timing {entry.name} on {len(timed)} images, one at a time ...", file=sys.stderr, flush=True)
            latency = measure_latency(entry, timed)
        elif options.latency_images:
            latency = server_latency(entry.classifier, timed)
        results.append({"name": entry.name, "path": entry.path, "format": entry.format, "kind": entry.kind,
                        "size_bytes": entry.size_bytes, "spec_title": entry.spec.title,
                        "images_per_s": images_per_s, "latency_ms": latency})
    return results, probs_by_name


def joint_inference(options, entries, y_true, probs_by_name) -> List[Dict]:
    """Per edge copy, agreement and accuracy if it escalated its hard images to the reference (escalation.py).
    Not for --via: a server's answers may already be settled by the cloud (an escalating edge)."""
    from .escalation import escalation_curves

    return [] if options.via else escalation_curves(entries, y_true, probs_by_name)


def compare(options) -> Dict:
    """The comparison as a pipeline: arguments, images, models, pixels, predictions and timing, scores, joint
    inference, result."""
    progress = not options.quiet
    notes: List[str] = []
    check_arguments(options)
    labelled = labelled_samples(options, notes)
    entries, via_text, calibration_text = models_to_compare(options, notes, progress)
    all_classes = class_list(entries, labelled, notes)
    kept, pixels, sizes = read_pixels(labelled, entries, notes, progress)
    y_true = np.array([all_classes.index(s.label) for s in kept])
    results, probs_by_name = run_models(entries, pixels, options, progress)
    for result, scores in zip(results, score(y_true, probs_by_name, entries[0].name, all_classes)):
        result.update(scores)
    escalation = joint_inference(options, entries, y_true, probs_by_name)
    rejection = [] if options.via else rejection_table(entries, pixels, probs_by_name)
    return {**result_of(options, entries, kept, sizes, all_classes, results, probs_by_name, notes, via_text,
                        calibration_text), "escalation": escalation, "rejection": rejection}


def result_of(options, entries, kept, sizes, all_classes, results, probs_by_name, notes, via_text,
              calibration_text) -> Dict:
    """What report.md, report.json and the summary are written from."""
    from .report import machine_line, small_n_warning

    cloud = entries[0]
    class_names = tuple(cloud.spec.class_names)
    standin = bool(cloud.spec.standin or is_standin_data(options.data)
                   or (model_kind(options.cloud_model) == "standin" and not options.via))
    title = (f"V2 servers {', '.join(e.name for e in entries)}" if options.via
             else f"{cloud.spec.title}: cloud TF vs edge TFLite")
    if standin and STANDIN_NOTE not in title:
        title += f" ({STANDIN_NOTE})"
    n = len(kept)
    return {
        "title": title, "standin": standin, "cloud_model": cloud.path if options.via else options.cloud_model,
        "reference": cloud.name,
        "data": describe(options.data), "n": n, "class_names": all_classes,
        "small_n_warning": small_n_warning(n, results[0]["accuracy_ci95"]),
        "preprocessing": ("each image decoded and resized once (bilinear, as tf.image.resize) to uint8 "
                          f"{'/'.join(f'{s}x{s}' for s in sizes)}; every model got the same pixels, scaled to its own "
                          "input range"),
        "calibration": calibration_text or (
            "n/a (servers)" if options.via
            else "unknown (no conversion-report.json beside the int8 model)" if any("int8" in e.name for e in entries)
            else None),
        "via": via_text, "threads_all": os.cpu_count() or 1, "notes": notes,
        "throughput_note": (f"images per second over the whole accuracy pass in batches of {options.batch_size} "
                            + ("per HTTP request, the servers' own threads (after one warm-up request)"
                               if options.via else "(TFLite runs a batch one image at a time), all threads, model "
                               "calls only (after one warm-up batch)")),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_line(),
        "models": results,
        "predictions": [
            {"file": s.name, "label": s.label,
             "predictions": {name: class_names[int(p.argmax())]
                             for name, p in ((k, v[i]) for k, v in probs_by_name.items())}}
            for i, s in enumerate(kept)
        ],
    }


# ---------------------------------------------------------------------------------------------- the command


def agreement_text(agree: Dict) -> str:
    """'288/300 = 96.0% (95% CI 93.1%-97.7%)': top-1 agreement with the reference, the edge's question."""
    return count_text(agree["same"], agree["n"], agree.get("ci95"))


def summary_lines(result: Dict) -> List[str]:
    lines = [result["title"], f"data: {result['data']} (N={result['n']})"]
    if result.get("small_n_warning"):
        lines.append(f"WARNING: {result['small_n_warning']}")
    width = max(len(m["name"]) for m in result["models"])
    for m in result["models"]:
        agree = m.get("agreement")
        lat = ((m.get("latency_ms") or {}).get("threads_1") or {}).get("p50")
        lines.append(
            f"  {m['name']:<{width}}  "
            + (f"agreement {agreement_text(agree)}" if agree else "(reference)")
            + f"  accuracy {count_text(m['correct'], m['n'], m['accuracy_ci95'])}"
            f"  macro-F1 {m['macro_f1']:.3f}"
            + (f"  {size_text(m['size_bytes'])}" if m.get("size_bytes") else "")
            + (f"  p50 {lat:.1f} ms @1 thread" if lat is not None else ""))
    return lines + rejection_lines(result.get("rejection") or [])


def run(args) -> int:
    from .report import write_report

    options = CompareOptions.from_args(args)
    result = compare(options)
    paths = write_report(result, options.out, plots=options.plots)
    print("\n".join(summary_lines(result)))
    print(f"report: {paths['md']}  (also {', '.join(Path(p).name for k, p in paths.items() if k != 'md')})")
    return 0
