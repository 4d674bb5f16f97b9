"""The leaf gate (issue 31, docs/leaf-gate.md), measured on ../shared:

  rejection      `unknown` on not-cassava by kind (scenes, other crops' leaves; the dev/test halves apart), real leaves
                 turned away on cassava-field (photos nothing was chosen or calibrated on) with a 95% interval
  tiers          the same `unknown` decision with the edge's interpreter (ai-edge-litert) and the cloud's
                 (tf.lite.Interpreter) on every photo in ../shared
  cost           gate latency beside the cassava model's (int8, 1 thread, p50, interleaved in one process), RSS added
                 by loading and running the gate (a fresh process, no TensorFlow), bytes added to the model folder

The gate is the one `cassava convert` builds for the real model calibrated on cassava-more:
  cassava convert --model ../shared/models/cassava-cnn-256/saved_model --input-scale 255 \\
      --classes cbb,cbsd,cgm,cmd,healthy --calibration ../shared/data/cassava-more --quantize int8 --out DIR
(converted once into CASSAVA_CACHE/bench when --converted is not given). Skipped without ../shared.
Usage: python benchmarks/bench_gate.py [--converted DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REAL_CLASSES, REAL_MODEL, REPO, _convert  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def converted_real() -> Path:
    from cassava.edge.gate.build import GATE_VERSION
    from cassava.shared.cache import built_once, cache_dir
    from cassava.shared.spec import CONVERTED_LAYOUT

    target = cache_dir() / "bench" / f"real-int8-more-{GATE_VERSION}-{CONVERTED_LAYOUT}"
    return built_once(target, "bench-real-gate",
                      lambda folder: _convert("--model", REAL_MODEL, "--input-scale", "255", "--classes", REAL_CLASSES,
                                              "--quantize", "int8", "--calibration", SHARED / "cassava-more",
                                              "--out", folder, "--quiet"),
                      f"converting the real model (int8, calibrated on cassava-more, with its gate) in {target} ...",
                      lambda folder: f"{folder} ready")


def photos(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


def model_input(files, spec) -> np.ndarray:
    from cassava.shared.preprocess import preprocess, to_model_input

    return to_model_input(np.stack([preprocess(f, spec.input_size) for f in files]), spec.input_scale)


def interval(k: int, n: int) -> str:
    from cassava.shared.evaluate.metrics import wilson_interval
    from cassava.shared.formatting import count_text

    return count_text(k, n, wilson_interval(k, n))


def rejection(gate, spec) -> dict:
    rows = {}
    for kind in ("scenes", "other-crop-leaves"):
        files = photos(SHARED / "not-cassava" / kind)
        unknown = gate.distances(model_input(files, spec), spec.input_scale) > gate.threshold
        dev = np.arange(len(files)) % 2 == 0  # the half the settings were chosen on (docs/leaf-gate.md)
        rows[kind] = {"all": interval(int(unknown.sum()), len(files)),
                      "dev half": interval(int(unknown[dev].sum()), int(dev.sum())),
                      "test half": interval(int(unknown[~dev].sum()), int((~dev).sum()))}
    files = photos(SHARED / "cassava-field")
    unknown = gate.distances(model_input(files, spec), spec.input_scale) > gate.threshold
    rows["cassava-field (turned away)"] = {"all": interval(int(unknown.sum()), len(files))}
    return rows


def tiers(folder: Path, spec) -> str:
    """Both interpreters on every photo in ../shared/data: the same decision?"""
    from cassava.edge.gate.gate import LeafGate

    edge, cloud = LeafGate(folder, backend="ai-edge-litert"), LeafGate(folder, backend="tensorflow")
    same = total = 0
    files = photos(SHARED)
    for start in range(0, len(files), 32):
        x = model_input(files[start:start + 32], spec)
        a = edge.distances(x, spec.input_scale) > edge.threshold
        b = cloud.distances(x, spec.input_scale) > cloud.threshold
        same, total = same + int(np.sum(a == b)), total + len(a)
    return interval(same, total)


def latency(folder: Path, spec, repeats: int = 40) -> dict:
    from cassava.edge.gate.gate import LeafGate, gate_pixels
    from cassava.edge.interpreter import load_tflite_classifier

    x = model_input(photos(SHARED / "cassava-field")[:1], spec)
    model, gate = load_tflite_classifier(str(folder), num_threads=1, pool_size=1), LeafGate(folder)
    pixels = gate_pixels(x, spec.input_scale, gate.embedder.size)
    times = {"cassava model (int8)": [], "gate backbone (int8)": [], "gate total (resize, backbone, k-NN)": []}
    for _ in range(repeats):  # interleaved: the machine's load hits all three alike
        for name, call in (("cassava model (int8)", lambda: model.predict(x)),
                           ("gate backbone (int8)", lambda: gate.embedder.embed(pixels)),
                           ("gate total (resize, backbone, k-NN)", lambda: gate.distances(x, spec.input_scale))):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values[3:]) * 1000) for name, values in times.items()}


RSS_PROBE = """
import json, sys
import numpy as np
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024
from cassava.edge.interpreter import load_tflite_classifier
from cassava.edge.gate.gate import LeafGate
folder = sys.argv[1]
model = load_tflite_classifier(folder, num_threads=1, pool_size=1)
x = np.zeros((1, model.spec.input_size, model.spec.input_size, 3), np.float32)
model.predict(x)
before = rss()
import time
started = time.perf_counter()
gate = LeafGate(folder)
loaded = time.perf_counter() - started
gate.distances(x, model.spec.input_scale)
print(json.dumps({"model_loaded": before, "with_gate": rss(), "gate_load_s": loaded,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def memory(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--converted", type=Path, help="a folder `cassava convert` wrote for the real model")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the gate is measured on ../shared only)")
        return 0
    from cassava.edge.gate.gate import GATE_FILE, GATE_REFERENCES, GATE_TFLITE, LeafGate
    from cassava.shared.formatting import size_text
    from cassava.shared.spec import read_spec_file

    folder = args.converted or converted_real()
    spec, gate = read_spec_file(folder), LeafGate(folder)
    bound = gate.settings["bound"]
    print(f"gate: {folder} — threshold {gate.threshold:.4f} (k={gate.k}, {gate.settings['references']} references), "
          f"set on {bound['held_out']} held-out cassava-more photos: expected rate turned away <= "
          f"{bound['expected_rate_at_most']:.1%}, <= {bound['rate_at_most_with_confidence']:.1%} with "
          f"{bound['confidence']:.0%} confidence")
    print("\n| photos | unknown (95% CI) |\n|---|---|")
    for kind, rows in rejection(gate, spec).items():
        for part, text in rows.items():
            print(f"| {kind} ({part}) | {text} |")
    print(f"\nsame `unknown` decision, edge (ai-edge-litert) vs cloud (tf.lite) interpreter, all of ../shared/data: "
          f"{tiers(folder, spec)}")
    print("\n| on the edge, 1 thread, one photo | p50 ms |\n|---|---|")
    for name, ms in latency(folder, spec).items():
        print(f"| {name} | {ms:.2f} |")
    rss = memory(folder)
    print(f"\nedge process RSS: {size_text(rss['model_loaded'])} with the cassava model, "
          f"{size_text(rss['with_gate'])} with the gate too (+{size_text(rss['with_gate'] - rss['model_loaded'])}); "
          f"TensorFlow imported: {rss['tensorflow_imported']}; loading the gate took {rss['gate_load_s']:.2f} s")
    sizes = {name: (folder / name).stat().st_size for name in (GATE_TFLITE, GATE_REFERENCES, GATE_FILE)}
    print("size added to the model folder: " + ", ".join(f"{n} {size_text(b)}" for n, b in sizes.items())
          + f" = {size_text(sum(sizes.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
