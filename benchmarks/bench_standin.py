"""The stand-in's first build, today's recipe against the one before it (stand-in model, synthetic data).

Each build runs as a user's first `make demo` would: a fresh Python process and an empty CASSAVA_CACHE, so it
includes drawing the synthetic photos, importing TensorFlow, training and `model.export()`.
  v1    drawing in one process, then 40 epochs on 224-px arrays (the stand-in until issue 15)
  fast  drawing in one child process per core while TensorFlow loads, then 4 epochs on pre-pooled 56-px arrays
        with batch normalisation
`fast` runs before and after `v1` and the two are averaged, so a change in the machine's load during the run hits
both recipes alike. CPU seconds (user + sys, children included) are printed too: other work on a shared machine
moves them less than wall time. Both recipes are deterministic: the accuracies repeat exactly.

    python benchmarks/bench_standin.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# The bar: a first build in at most a quarter of v1's time, at v1's validation accuracy within 2 points.
TARGET_TIME_RATIO = 0.25
TARGET_ACCURACY_POINTS = 2.0

# The stand-in's recipe until issue 15 (standin-v1), kept here only to be compared against.
V1 = {"name": "v1", "epochs": 40, "learning_rate": 3e-3, "pooled": False, "batch_norm": False, "cosine": False}

CHILD = """
import json, sys
from cassava.cloud.standin import FAST, Recipe, build_standin
from cassava.shared.cache import standin_dir, standin_model_dir
from cassava.shared.synthetic import ensure_dataset
if sys.argv[2] == "serial":
    ensure_dataset(standin_dir() / "data", workers=1)
recipe = FAST if sys.argv[1] == "fast" else Recipe(**json.loads(sys.argv[1]))
print(json.dumps(build_standin(standin_model_dir(), recipe)))
"""


def build(recipe: str, drawing: str) -> dict:
    """One first build in a fresh process and an empty cache: wall and CPU seconds, accuracy."""
    with tempfile.TemporaryDirectory(prefix=f"bench-standin-{recipe}-") as cache:
        env = {**os.environ, "CASSAVA_CACHE": cache}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        argument = recipe if recipe == "fast" else json.dumps(V1)
        result = subprocess.run([sys.executable, "-c", CHILD, argument, drawing], env=env, capture_output=True,
                                text=True, timeout=3600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{recipe} build failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**stats, "wall_s": wall, "cpu_s": cpu}


def main() -> dict:
    runs = {"fast (1)": build("fast", "parallel"), "v1": build("v1", "serial"), "fast (2)": build("fast", "parallel")}
    v1 = runs["v1"]
    fast = {key: (runs["fast (1)"][key] + runs["fast (2)"][key]) / 2 for key in ("wall_s", "cpu_s")}
    fast["val_accuracy"] = runs["fast (2)"]["val_accuracy"]
    print("stand-in first build (fresh process, empty cache; stand-in model, synthetic data)")
    print(f"  {'recipe':<9} {'epochs':>6} {'wall s':>7} {'CPU s':>7} {'val accuracy':>12}")
    for name, run in runs.items():
        print(f"  {name:<9} {run['epochs']:>6} {run['wall_s']:>7.1f} {run['cpu_s']:>7.1f} {run['val_accuracy']:>12.3f}")
    same = runs["fast (1)"]["val_accuracy"] == runs["fast (2)"]["val_accuracy"]
    print(f"  fast ÷ v1: wall {fast['wall_s'] / v1['wall_s']:.3f}, CPU {fast['cpu_s'] / v1['cpu_s']:.3f}; "
          f"the two fast builds {'agree' if same else 'DIFFER'} on accuracy")
    points = (fast["val_accuracy"] - v1["val_accuracy"]) * 100
    return {
        "runs": runs, "deterministic": same,
        "ratios": [
            {"name": "stand-in first build time, fast ÷ v1 recipe (wall)", "value": fast["wall_s"] / v1["wall_s"],
             "target": TARGET_TIME_RATIO, "better": "lower", "unit": "×",
             "note": f"{fast['wall_s']:.0f} vs {v1['wall_s']:.0f} s; CPU {fast['cpu_s']:.0f} vs {v1['cpu_s']:.0f} s"},
            {"name": "stand-in validation accuracy, |fast − v1| in points", "value": abs(points),
             "target": TARGET_ACCURACY_POINTS, "better": "lower", "unit": " pt",
             "note": f"{fast['val_accuracy']:.3f} vs {v1['val_accuracy']:.3f}, synthetic split N=180"},
        ],
    }


if __name__ == "__main__":
    main()
