"""`cassava compare` / `python -m cassava.compare`: the accuracy comparison of the cloud model and its TFLite copies.

One labelled data set, preprocessed ONCE (decode -> resize -> uint8, the shared path), and the very same pixels fed
to the full TF model and to every TFLite variant. Per model: accuracy with a 95% Wilson interval, macro-F1,
per-class precision/recall, confusion matrix, top-1 agreement and mean |Δp| against the cloud model, size on disk,
per-image latency p50/p95 at 1 thread and at all threads, and images/s. Written as report.md, report.json and PNGs.

Without `--edge-model`, the cloud model is converted here (int8, dynamic, float16) with `cassava convert` into
OUT/edge-models/, and the report says which images calibrated int8.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..data import describe, is_standin_data, load_samples, preprocess_samples
from ..errors import CassavaError
from ..labels import parse_class_list
from ..spec import CROPNET_HANDLE, STANDIN_NOTE, TFLITE_FILE, model_kind, read_spec_file

DEFAULT_VARIANTS = ("int8", "dynamic", "float16")
CLOUD_NAME = "cloud TF"


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
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0),
                        help="the cloud model's pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list,
                        help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
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


# ---------------------------------------------------------------------------------------------- models


class Entry:
    """One model in the comparison: its name, what it is, and how to run it."""

    def __init__(self, name: str, path: str, fmt: str, kind: str, classifier=None, size_bytes: Optional[int] = None,
                 overrides: Optional[dict] = None):
        self.name, self.path, self.format, self.kind = name, path, fmt, kind
        self.classifier = classifier  # for TFLite: num_threads = all cores
        self.size_bytes = size_bytes
        self.spec = classifier.spec if classifier is not None else None
        self.overrides = overrides or {}  # input_scale / classes to load it again (TFLite at 1 thread)


def disk_size(path) -> Optional[int]:
    """Bytes on disk: a .tflite file, the model.tflite in a converted folder, or a whole SavedModel folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if (path / TFLITE_FILE).is_file():
        return (path / TFLITE_FILE).stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _tflite_variant(path: Path, spec) -> str:
    info = (spec.tflite or {}) if spec is not None else {}
    for key in ("quantize", "quantization", "variant", "mode"):
        if isinstance(info.get(key), str):
            return info[key]
    stem = path.parent.name if path.name == TFLITE_FILE else path.stem if path.suffix == ".tflite" else path.name
    return stem


def _tflite_format(variant: str, spec) -> str:
    io = ((spec.tflite or {}).get("io") if spec is not None else None) or None
    described = {"int8": "TFLite int8 (full integer" + (f", {io} I/O)" if io else ")"),
                 "dynamic": "TFLite dynamic range (int8 weights, float maths)",
                 "float16": "TFLite float16 weights", "none": "TFLite float32"}
    return described.get(variant, f"TFLite {variant}")


def load_cloud(args) -> Entry:
    from ..classifier import load_classifier

    model = args.cloud_model
    overrides = {"input_scale": args.input_scale, "classes": args.classes}
    if model_kind(model) == "tflite":
        classifier = load_classifier(model, num_threads=os.cpu_count(), **overrides)
        return Entry(CLOUD_NAME.replace("TF", "TFLite"), model, "TFLite", "tflite", classifier, disk_size(model),
                     overrides)
    classifier = load_classifier(model, **overrides)
    from cassava.cloud.model import resolve_model_path

    path = resolve_model_path(model)
    return Entry(CLOUD_NAME, str(model), "TF SavedModel (float32)", "tf", classifier, disk_size(path))


def edge_overrides(path: str, cloud: Entry) -> dict:
    """A bare .tflite without cassava-model.json borrows the cloud model's pixel range and classes."""
    if not Path(path).exists():
        raise CassavaError(f"--edge-model {path}: no such file or folder")
    if model_kind(path) != "tflite":
        raise CassavaError(f"--edge-model {path}: not a .tflite file or a folder with model.tflite "
                           "(run `cassava convert`)")
    if read_spec_file(path) is None:
        return {"input_scale": cloud.spec.input_scale, "classes": cloud.spec.class_names}
    return {}


def edge_entries(paths: List[str], cloud: Entry) -> List[Entry]:
    from ..classifier import load_classifier

    entries, seen = [], set()
    for path in paths:
        overrides = edge_overrides(path, cloud)
        classifier = load_classifier(path, num_threads=os.cpu_count(), **overrides)
        variant = _tflite_variant(Path(path), classifier.spec)
        name = f"edge {variant}"
        while name in seen:
            name += "'"
        seen.add(name)
        entries.append(Entry(name, str(path), _tflite_format(variant, classifier.spec), "tflite", classifier,
                             disk_size(path), overrides))
    return entries


# ---------------------------------------------------------------------------------------------- conversion


def conversion_plan(args) -> Dict[str, List[str]]:
    """`cassava convert` arguments per variant, and where int8's calibration images come from.

    - the stand-in: the converter's own default, the synthetic train split (disjoint from the validation photos);
    - --calibration given: those images calibrate, the evaluation images verify;
    - otherwise (say the 27 real photos) there is nothing else to calibrate on: the first half of the evaluation
      images calibrates int8 and the other half verifies it, and the report says so loudly.
    The converter's own agreement gate is off (--min-agreement 0): here agreement is what is being measured."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ("int8", "dynamic", "float16", "none")]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise CassavaError(f"--variants {args.variants}: expected some of int8,dynamic,float16,none")
    standin = model_kind(args.cloud_model) == "standin"
    verify = [] if standin else ["--verify-data", *args.data]
    plan = {}
    for variant in variants:
        extra = ["--min-agreement", "0", "--quiet"]
        if variant == "int8" and args.calibration:
            extra += ["--calibration", *args.calibration, *verify]
        elif variant == "int8" and not standin:
            total = len(load_samples(args.data))
            if total < 2:
                raise CassavaError("int8 needs calibration images: pass --calibration DATA "
                                   "(or --variants dynamic,float16)")
            extra += ["--calibration", *args.data, "--samples", str(min(200, total // 2))]
        elif variant != "int8":
            extra += verify
        plan[variant] = extra
    return plan


def convert_variants(args, out_dir: Path, progress: bool) -> List[str]:
    """Convert the cloud model to each variant with `cassava convert` (reused when nothing changed)."""
    paths = []
    for variant, extra in conversion_plan(args).items():
        target = out_dir / variant
        command = ["--model", args.cloud_model, "--out", str(target), "--quantize", variant, *extra]
        if args.input_scale:
            command += ["--input-scale", f"{args.input_scale:g}"]
        if args.classes:
            command += ["--classes", ",".join(args.classes)]
        stamp = {"cloud_model": _identity(args.cloud_model), "command": command}
        stamp_file = target / "compare-source.json"
        if (target / "model.tflite").is_file() and stamp_file.is_file():
            try:
                if json.loads(stamp_file.read_text()) == stamp:
                    paths.append(str(target))
                    continue
            except json.JSONDecodeError:
                pass
        if progress:
            print(f"converting {args.cloud_model} -> {target} ({variant}) ...", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, "-m", "cassava", "convert", *command], capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.startswith("cassava convert")] or \
                result.stderr.strip().splitlines() or ["no output"]
            raise CassavaError(f"converting the cloud model to {variant} failed: {lines[-1][:400]}")
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
        paths.append(str(target))
    return paths


def conversion_notes(entries: List["Entry"], eval_data: str) -> tuple:
    """(calibration sentence for the report, warnings) from each converted model's conversion-report.json."""
    parts, warnings = [], []
    for entry in entries:
        report_file = Path(entry.path) / "conversion-report.json" if Path(entry.path).is_dir() else \
            Path(entry.path).parent / "conversion-report.json"
        if entry.kind != "tflite" or not report_file.is_file():
            continue
        try:
            report = json.loads(report_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        calibration = report.get("calibration")
        verification = report.get("verification") or {}
        if not calibration:
            continue
        text = f"{entry.name}: {calibration.get('images')} images from {calibration.get('data')}"
        if verification:
            text += (f"; the converter checked it on {verification.get('images')} other images from "
                     f"{(report.get('data') or {}).get('verification')} ({verification.get('agree')}/"
                     f"{verification.get('images')} top-1 agreement with the source"
                     + (", 95% CI {:.1%}-{:.1%}".format(*verification["agreement_ci95"])
                        if verification.get("agreement_ci95") else "") + ")")
        parts.append(text)
        if calibration.get("data") == eval_data:
            warnings.append(
                f"**{entry.name} was calibrated on {calibration.get('images')} of the evaluation images themselves** "
                f"({eval_data}): no separate calibration set was given, so int8 has seen part of this data and its "
                "numbers here may be slightly optimistic. Pass --calibration with other photos for an unbiased check.")
    return ("; ".join(parts) if parts else None), warnings


def _identity(model: str) -> dict:
    """What identifies a model version for the conversion cache: its path and the SavedModel's mtime."""
    if model_kind(model) == "standin":
        from ..cache import STANDIN_VERSION

        return {"model": model, "version": STANDIN_VERSION}
    path = Path(model)
    pb = path / "saved_model.pb"
    return {"model": str(path.resolve()) if path.exists() else model,
            "mtime": pb.stat().st_mtime if pb.is_file() else None}


# ---------------------------------------------------------------------------------------------- measuring


def predict_all(classifier, x: np.ndarray, batch_size: int, label: str, progress: bool):
    """Batched probabilities for every image, and images/s over the pass (after one warm-up call)."""
    from tqdm import tqdm

    classifier.predict(x[:batch_size])  # warm-up: TF traces, TFLite allocates
    out = []
    bar = tqdm(total=len(x), desc=label, unit="img", disable=not progress, file=sys.stderr)
    started = time.perf_counter()
    for start in range(0, len(x), batch_size):
        out.append(np.asarray(classifier.predict(x[start:start + batch_size]), dtype=np.float32))
        bar.update(len(out[-1]))
    elapsed = time.perf_counter() - started
    bar.close()
    return np.concatenate(out), (len(x) / elapsed if elapsed > 0 else None)


def time_per_image(classifier, x: np.ndarray, warmup: int = 2) -> List[float]:
    """Seconds per model call on one image at a time (model call only: pixels are already prepared)."""
    for i in range(min(warmup, len(x))):
        classifier.predict(x[i:i + 1])
    times = []
    for i in range(len(x)):
        started = time.perf_counter()
        classifier.predict(x[i:i + 1])
        times.append(time.perf_counter() - started)
    return times


def _latency(times) -> Dict:
    from .metrics import percentiles_ms

    return {**percentiles_ms(times), "images": len(times)}


def tf_latency_one_thread(args, x: np.ndarray) -> Dict:
    """TF's thread pools are process-global and fixed at first use: time the 1-thread case in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        pixels = Path(tmp) / "x.npy"
        np.save(pixels, x)
        job = {"model": args.cloud_model, "input_scale": args.input_scale,
               "classes": list(args.classes) if args.classes else None, "x": str(pixels), "threads": 1}
        code = "from cassava.shared.evaluate.compare import _latency_worker; _latency_worker()"
        result = subprocess.run([sys.executable, "-c", code, json.dumps(job)], capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"1-thread TF timing failed: {why}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _latency_worker():
    """Subprocess entry: time one TF model at a fixed thread count, print one JSON line."""
    job = json.loads(sys.argv[1])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(job["threads"])
    from ..classifier import load_classifier

    classifier = load_classifier(job["model"], input_scale=job["input_scale"],
                                 classes=tuple(job["classes"]) if job["classes"] else None)
    x = np.load(job["x"])
    print(json.dumps(_latency(time_per_image(classifier, x))))


def measure_latency(entry: Entry, args, x: np.ndarray) -> Dict:
    """p50/p95 per image at 1 thread and at all threads, honestly labelled for TF."""
    from ..classifier import load_classifier

    cores = os.cpu_count() or 1
    if entry.kind == "tflite":
        one = load_classifier(entry.path, num_threads=1, **entry.overrides)
        return {"threads_1": _latency(time_per_image(one, x)),
                "threads_all": _latency(time_per_image(entry.classifier, x)),
                "note": f"TFLite: LiteRT interpreter with num_threads=1 and num_threads={cores} (os.cpu_count())"}
    result = {"threads_all": _latency(time_per_image(entry.classifier, x))}
    one = tf_latency_one_thread(args, x)
    if "error" in one:
        result["threads_1"] = None
        result["note"] = f"TF: 'all threads' is TF's default thread pools ({cores} cores); {one['error']}"
    else:
        result["threads_1"] = one
        result["note"] = (f"TF: 'all threads' is TF's default thread pools in this process ({cores} cores); "
                          "'1 thread' ran in a separate process with intra/inter-op threads set to 1 "
                          "(tf.config.threading is process-global)")
    return result


# ---------------------------------------------------------------------------------------------- --via servers


def parse_via(text: str) -> List[tuple]:
    pairs = []
    for part in text.split(","):
        name, sep, url = part.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise CassavaError(f"--via {text}: expected NAME=URL[,NAME=URL], e.g. local=http://127.0.0.1:8080,edge=http://127.0.0.1:9080")
        pairs.append((name.strip(), url.strip()))
    if len({n for n, _ in pairs}) != len(pairs):
        raise CassavaError(f"--via {text}: names must differ")
    return pairs


def via_entries(text: str, classes=None) -> List[Entry]:
    """One entry per running server, each spoken to over V2 REST by the client's own backend (uint8 pixels)."""
    try:
        from ..client.backends import ServerBackend
    except ImportError:
        raise CassavaError("--via needs the HTTP client (pip install 'cassava-cloud-edge[client]'); "
                           "compare in-process instead") from None
    entries = []
    for name, url in parse_via(text):
        classifier = ServerBackend(url, wire="uint8", classes=classes, strict_classes=True)
        classifier.spec.description = f"{classifier.info.name} at {url}"
        entries.append(Entry(name, url, "V2 server (REST, uint8 pixels)", "server", classifier, None))
    return entries


# ---------------------------------------------------------------------------------------------- the comparison


def _model_input(entry: Entry, pixels: np.ndarray) -> np.ndarray:
    from ..preprocess import to_model_input

    if getattr(entry.classifier, "raw_pixels", False):
        return pixels
    return to_model_input(pixels, entry.spec.input_scale)


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


def compare(args) -> Dict:
    from .report import machine_line, small_n_warning

    progress = not args.quiet
    if args.n < 0:
        raise CassavaError("-n must be 0 (all) or more")
    if args.batch_size < 1 or args.latency_images < 0:
        raise CassavaError("--batch-size must be at least 1 and --latency-images at least 0")
    samples = load_samples(args.data, args.n or None)
    labelled = [s for s in samples if s.label is not None]
    if not labelled:
        raise CassavaError(f"--data {describe(args.data)}: no labelled images "
                           "(give a folder with one sub-folder per class)")
    notes = []
    if len(labelled) < len(samples):
        notes.append(f"{len(samples) - len(labelled)} unlabelled image(s) ignored.")

    calibration_text = None
    if args.via:
        entries = via_entries(args.via, args.classes)
        cloud = entries[0]
        via_text = "running servers over HTTP: " + ", ".join(f"{e.name} = {e.path}" for e in entries)
    else:
        cloud = load_cloud(args)
        edge_paths = list(args.edge_model) if args.edge_model else \
            convert_variants(args, Path(args.out) / "edge-models", progress)
        entries = [cloud] + edge_entries(edge_paths, cloud)
        calibration_text, warnings = conversion_notes(entries, describe(args.data))
        notes += warnings
        via_text = "in this process (TensorFlow for the cloud model, the LiteRT interpreter for the TFLite copies)"

    class_names = tuple(cloud.spec.class_names)
    for entry in entries[1:]:
        if tuple(entry.spec.class_names) != class_names:
            raise CassavaError(f"{entry.name} ({entry.path}) has classes {','.join(entry.spec.class_names)} but the "
                               f"cloud model has {','.join(class_names)}: not copies of the same model")
    extra_labels = sorted({s.label for s in labelled} - set(class_names))
    all_classes = list(class_names) + extra_labels  # a label the models cannot output is always wrong
    if extra_labels:
        notes.append(f"label(s) {', '.join(extra_labels)} are not among the models' classes: "
                     "those images count as wrong.")

    sizes = sorted({e.spec.input_size for e in entries})
    kept, pixels, skipped = preprocess_samples(labelled, sizes, progress=progress)
    for line in skipped:
        print(line, file=sys.stderr)
    if skipped:
        notes.append(f"{len(skipped)} unreadable image(s) skipped (listed on stderr).")
    if not kept:
        raise CassavaError("no readable labelled images")
    y_true = np.array([all_classes.index(s.label) for s in kept])
    n = len(kept)

    results, probs_by_name = [], {}
    for entry in entries:
        x = _model_input(entry, pixels[entry.spec.input_size])
        probs, images_per_s = predict_all(entry.classifier, x, args.batch_size, entry.name, progress)
        probs_by_name[entry.name] = probs
        timed = x[:args.latency_images]
        if args.latency_images and not args.via:
            if progress:
                print(f"timing {entry.name} on {len(timed)} images, one at a time ...", file=sys.stderr, flush=True)
            latency = measure_latency(entry, args, timed)
        elif args.latency_images:
            latency = {"threads_all": _latency(time_per_image(entry.classifier, timed)),
                       "threads_1": None, "note": "server: HTTP round trip per image, the server's own threads"}
        else:
            latency = None
        results.append({"name": entry.name, "path": entry.path, "format": entry.format, "kind": entry.kind,
                        "size_bytes": entry.size_bytes, "spec_title": entry.spec.title,
                        "images_per_s": images_per_s, "latency_ms": latency})
    for result, scores in zip(results, score(y_true, probs_by_name, cloud.name, all_classes)):
        result.update(scores)

    standin = bool(cloud.spec.standin or is_standin_data(args.data)
                   or (model_kind(args.cloud_model) == "standin" and not args.via))
    title = (f"V2 servers {', '.join(e.name for e in entries)}" if args.via
             else f"{cloud.spec.title}: cloud TF vs edge TFLite")
    if standin and STANDIN_NOTE not in title:
        title += f" ({STANDIN_NOTE})"
    cores = os.cpu_count() or 1
    return {
        "title": title, "standin": standin, "cloud_model": cloud.path if args.via else args.cloud_model,
        "reference": cloud.name,
        "data": describe(args.data), "n": n, "class_names": all_classes,
        "small_n_warning": small_n_warning(n, results[0]["accuracy_ci95"]),
        "preprocessing": ("each image decoded and resized once (bilinear, as tf.image.resize) to uint8 "
                          f"{'/'.join(f'{s}x{s}' for s in sizes)}; every model got the same pixels, scaled to its own "
                          "input range"),
        "calibration": calibration_text or (
            "n/a (servers)" if args.via
            else "unknown (no conversion-report.json beside the int8 model)" if any("int8" in e.name for e in entries)
            else None),
        "via": via_text, "threads_all": cores, "notes": notes,
        "throughput_note": (f"images per second over the whole accuracy pass in batches of {args.batch_size} "
                            + ("per HTTP request, the servers' own threads (after one warm-up request)" if args.via else
                               "(TFLite runs a batch one image at a time), all threads, model calls only "
                               "(after one warm-up batch)")),
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


def agreement_text(agree: Dict) -> str:
    """'288/300 = 96.0% (95% CI 93.1%-97.7%)': top-1 agreement with the reference, the edge's question."""
    text = f"{agree['same']}/{agree['n']} = {agree['fraction']:.1%}"
    if agree.get("ci95"):
        text += " (95% CI {:.1%}-{:.1%})".format(*agree["ci95"])
    return text


def summary_lines(result: Dict) -> List[str]:
    from .report import _size

    lines = [result["title"], f"data: {result['data']} (N={result['n']})"]
    if result.get("small_n_warning"):
        lines.append(f"WARNING: {result['small_n_warning']}")
    width = max(len(m["name"]) for m in result["models"])
    for m in result["models"]:
        low, high = m["accuracy_ci95"]
        agree = m.get("agreement")
        lat = ((m.get("latency_ms") or {}).get("threads_1") or {}).get("p50")
        lines.append(
            f"  {m['name']:<{width}}  "
            + (f"agreement {agreement_text(agree)}" if agree else "(reference)")
            + f"  accuracy {m['correct']}/{m['n']} = {m['accuracy']:.1%} (95% CI {low:.1%}-{high:.1%})"
            f"  macro-F1 {m['macro_f1']:.3f}"
            + (f"  {_size(m['size_bytes'])}" if m.get("size_bytes") else "")
            + (f"  p50 {lat:.1f} ms @1 thread" if lat is not None else ""))
    return lines


def run(args) -> int:
    from .report import write_report

    result = compare(args)
    paths = write_report(result, args.out, plots=not args.no_plots)
    print("\n".join(summary_lines(result)))
    print(f"report: {paths['md']}  (also {', '.join(Path(p).name for k, p in paths.items() if k != 'md')})")
    return 0


def main(argv=None) -> int:
    from cassava.cli import main as cli_main

    return cli_main(["compare", *(sys.argv[1:] if argv is None else argv)])
