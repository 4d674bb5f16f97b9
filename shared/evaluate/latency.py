"""Per-image latency for `cassava compare`: p50/p95 at 1 thread and at all threads, honestly labelled.

TensorFlow's thread pools are process-global and fixed at first use, so the TF model's 1-thread time is measured
in a fresh process: `python -m cassava.shared.evaluate.latency JOB.json` (this module's `main`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np

from .measure import time_per_image


def latency_summary(times) -> Dict:
    from .metrics import percentiles_ms

    return {**percentiles_ms(times), "images": len(times)}


def measure_latency(entry, x: np.ndarray) -> Dict:
    """p50/p95 per image at 1 thread and at all threads for one in-process model (`x`: its model input)."""
    from ..classifier import load_classifier

    cores = os.cpu_count() or 1
    if entry.kind == "tflite":
        one = load_classifier(entry.path, num_threads=1, **entry.overrides)
        return {"threads_1": latency_summary(time_per_image(one, x)),
                "threads_all": latency_summary(time_per_image(entry.classifier, x)),
                "note": f"TFLite: LiteRT interpreter with num_threads=1 and num_threads={cores} (os.cpu_count())"}
    result = {"threads_all": latency_summary(time_per_image(entry.classifier, x))}
    one = tf_latency_one_thread(entry.path, entry.overrides, x)
    if "error" in one:
        result["threads_1"] = None
        result["note"] = f"TF: 'all threads' is TF's default thread pools ({cores} cores); {one['error']}"
    else:
        result["threads_1"] = one
        result["note"] = (f"TF: 'all threads' is TF's default thread pools in this process ({cores} cores); "
                          "'1 thread' ran in a separate process with intra/inter-op threads set to 1 "
                          "(tf.config.threading is process-global)")
    return result


def server_latency(classifier, x: np.ndarray) -> Dict:
    return {"threads_all": latency_summary(time_per_image(classifier, x)),
            "threads_1": None, "note": "server: HTTP round trip per image, the server's own threads"}


def tf_latency_one_thread(model: str, overrides: dict, x: np.ndarray) -> Dict:
    """The cloud model's time per image at 1 thread, measured by `main` in a fresh process. `overrides`: its
    input_scale and classes, as it was loaded here."""
    with tempfile.TemporaryDirectory() as tmp:
        pixels, job_file = Path(tmp) / "x.npy", Path(tmp) / "job.json"
        np.save(pixels, x)
        classes = overrides.get("classes")
        job_file.write_text(json.dumps({"model": model, "input_scale": overrides.get("input_scale"),
                                        "classes": list(classes) if classes else None,
                                        "x": str(pixels), "threads": 1}))
        result = subprocess.run([sys.executable, "-m", __name__, str(job_file)], capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"1-thread TF timing failed: {why}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(job_file: str) -> None:
    """Time one TF model at a fixed thread count; print one JSON line."""
    job = json.loads(Path(job_file).read_text())
    from ..native import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(job["threads"])
    from ..classifier import load_classifier

    classifier = load_classifier(job["model"], input_scale=job["input_scale"],
                                 classes=tuple(job["classes"]) if job["classes"] else None)
    print(json.dumps(latency_summary(time_per_image(classifier, np.load(job["x"])))))


if __name__ == "__main__":
    main(sys.argv[1])
