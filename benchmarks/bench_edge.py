"""Edge vs cloud, per image on 1 thread: TFLite int8 / dynamic / float32 against the TF SavedModel; model sizes;
the edge server's memory (RSS) and cold start (process start to first answer), beside the cloud server's.

Latencies are measured side by side in one worker process (TF pinned to 1 intra-op and 1 inter-op thread, each
TFLite interpreter num_threads=1), interleaved image by image (every variant classifies the same image back to back)
so that load from other work on the machine hits every variant alike; the median per image is reported. The
stand-in (stand-in model, synthetic data) measures the machinery; the real 256-px model in ../shared is measured too
when it is there.

    python benchmarks/bench_edge.py          (BENCH_ROUNDS=5 rounds of 20 images per variant by default)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REAL_CLASSES, REAL_MODEL, REAL_PHOTOS, real_tflite, standin_tflite, tier_server  # noqa: E402

from cassava.shared.formatting import size_text  # noqa: E402
from cassava.shared.spec import TFLITE_FILE  # noqa: E402

VARIANTS = ("int8", "dynamic", "none")  # "none" = float32 TFLite, the size baseline
# Targets (from the edge design): int8 must at least halve the per-image time of the TF model on the same core,
# be under a third of the float TFLite file (int8 weights are 1/4 of float32, plus graph overhead), and the
# serving process must fit a 1 GB Raspberry Pi beside the OS and a camera (200 MB) and answer within 2 s of a
# (re)start, so a power cut costs a couple of photos, not a minute.
TARGET_LATENCY = 0.5
TARGET_SIZE = 0.3
TARGET_RSS_MB = 200.0
TARGET_COLD_START_S = 2.0
# Most of a cold start is importing MLServer itself, which no runtime can avoid and which scales with the machine:
# what the edge adds on top (server start, model load, first request) should stay under half of that floor, so
# that a machine where `import mlserver` takes t seconds answers within 1.5 t of a restart.
TARGET_COLD_VS_IMPORT = 1.5
COLD_ROUNDS = 5  # edge cold starts, each right after an `import mlserver` timing; the median of the 5 ratios
BLOCK_TF = 'raise ImportError("TensorFlow is blocked: the edge runs without it")\n'


# ---------------------------------------------------------------------------------------------- models


def models() -> dict:
    """name -> {"tf": SavedModel, variant: converted dir, "data": images, "scale", "classes"}."""
    from cassava.cloud.standin import ensure_standin

    found = {"stand-in": {"tf": str(ensure_standin()), "data": "standin", "scale": None, "classes": None,
                          **{v: str(standin_tflite(v)) for v in VARIANTS}}}
    if REAL_MODEL.is_dir() and REAL_PHOTOS.is_dir():
        found["real 256 px"] = {"tf": str(REAL_MODEL), "data": str(REAL_PHOTOS), "scale": 255.0,
                                "classes": REAL_CLASSES,
                                **{v: str(real_tflite(v)) for v in VARIANTS}}
    return found


# ---------------------------------------------------------------------------------------------- latency worker


def latency_worker(config: dict) -> dict:
    """Runs in a fresh process: per-image latency of every variant of one model, interleaved rounds."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.data import load_samples
    from cassava.shared.evaluate.measure import times_in_turn
    from cassava.shared.labels import parse_class_list
    from cassava.shared.preprocess import preprocess, to_model_input

    classes = parse_class_list(config["classes"]) if config["classes"] else None
    runners = {"TF SavedModel": load_tf_classifier(config["tf"], input_scale=config["scale"], classes=classes)}
    for variant in VARIANTS:
        runners[f"TFLite {variant}"] = load_tflite_classifier(config[variant], num_threads=1, pool_size=1)
    spec = runners["TF SavedModel"].spec
    pixels = np.stack([preprocess(s.source, spec.input_size) for s in load_samples(config["data"], config["images"])])
    x = to_model_input(pixels, spec.input_scale)
    # every variant on the same image back to back: a load spike hits them alike
    times = times_in_turn(runners, x, config["rounds"], warmup=3)
    result = {name: {"median_ms": float(np.median(t) * 1000), "p90_ms": float(np.percentile(t, 90) * 1000),
                     "min_ms": float(np.min(t) * 1000), "n": len(t)}
              for name, t in times.items()}
    result["batching"] = batching(config["int8"], x)
    return result


def batching(model_dir: str, x) -> dict:
    """The edge runs batches image by image on a batch-1 interpreter; this measures the alternative (resize to N)."""
    from cassava.edge.interpreter import interpreter_class, model_file

    rows = {}
    for threads in (1, 2):
        loop_it = interpreter_class()(model_path=str(model_file(model_dir)), num_threads=threads)
        loop_it.allocate_tensors()
        batch_it = interpreter_class()(model_path=str(model_file(model_dir)), num_threads=threads)
        port_in, port_out = loop_it.get_input_details()[0], loop_it.get_output_details()[0]
        n = min(8, len(x))
        q = quantize_input(x[:n], port_in)
        batch_it.resize_tensor_input(port_in["index"], [n, *q.shape[1:]])
        batch_it.allocate_tensors()

        def loop():
            for i in range(n):
                loop_it.set_tensor(port_in["index"], q[i:i + 1])
                loop_it.invoke()
                loop_it.get_tensor(port_out["index"])

        def resized():
            batch_it.set_tensor(port_in["index"], q)
            batch_it.invoke()
            batch_it.get_tensor(port_out["index"])

        rows[f"{threads} thread(s)"] = {"loop_ms_per_image": _best(loop) / n * 1000,
                                        "resized_ms_per_image": _best(resized) / n * 1000, "n": n}
    return rows


def quantize_input(x, detail):
    import numpy as np

    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _best(fn, repeats: int = 15) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_latency(name: str, model: dict, rounds: int) -> dict:
    config = {**model, "rounds": rounds, "images": 20}
    result = subprocess.run([sys.executable, __file__, "--latency-worker", json.dumps(config)], capture_output=True,
                            text=True, timeout=1800, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        raise RuntimeError(f"latency worker for {name} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- servers


def server_footprint(tier: str, model: str, block_tensorflow: bool) -> dict:
    """Cold start (process start -> first 200 answer) and RSS after warm-up of one real `mlserver start`."""
    import httpx
    import numpy as np
    import psutil

    from cassava.shared.protocol.v2 import build_request

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{tier}-"))
    server = tier_server(tier, model, workdir)
    if block_tensorflow:  # as on a Pi with only the [edge] extra installed
        blocked = workdir / "no-tensorflow"
        for name in ("tensorflow", "keras"):
            (blocked / name).mkdir(parents=True)
            (blocked / name / "__init__.py").write_text(BLOCK_TF)
        server.env["PYTHONPATH"] = str(blocked)
    request = build_request("uint8", pixels=np.zeros((1, 224, 224, 3), np.uint8))
    body = request.model_dump(mode="json", exclude_none=True)
    url = f"{server.url}/v2/models/{server.model_name}/infer"
    log = open(server.log_path, "ab")
    started = time.perf_counter()
    server.process = subprocess.Popen([sys.executable, "-c", "from mlserver.cli.main import main; main()", "start",
                                       str(server.workdir)], stdout=log, stderr=subprocess.STDOUT, env=server.env,
                                      start_new_session=True)
    try:
        cold = None
        with httpx.Client(timeout=5.0) as http:
            while time.perf_counter() - started < 300:
                if server.process.poll() is not None:
                    raise RuntimeError(f"{tier} server exited: {server.log()[-500:]}")
                try:
                    if http.post(url, json=body).status_code == 200:
                        cold = time.perf_counter() - started
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            if cold is None:
                raise RuntimeError(f"{tier} server never answered")
            for _ in range(30):  # warm-up: every code path of a request
                http.post(url, json=body)
        process = psutil.Process(server.process.pid)
        rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
        return {"cold_start_s": cold, "rss_mb": rss / 2**20, "processes": 1 + len(process.children(recursive=True))}
    finally:
        server.stop()
        log.close()


def python_floor() -> float:
    """Seconds for a bare `python -c 'import mlserver.cli.main'`: the part of a cold start no model can avoid.

    The process leaves with os._exit right after the import: a normal exit tears down everything MLServer imported
    (over a second here), which a server answering its first request has not done yet."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mlserver.cli.main, os; os._exit(0)"], check=True, capture_output=True)
    return time.perf_counter() - started


def edge_cold_starts(model: str, rounds: int = COLD_ROUNDS):
    """(edge footprint: median cold start and RSS; median import floor; the rounds' floors; median of the rounds'
    cold start ÷ floor). Each cold start comes right after its floor, so load from other work hits both alike."""
    import statistics

    floors, runs = [], []
    for _ in range(rounds):
        floors.append(python_floor())
        runs.append(server_footprint("edge", model, block_tensorflow=True))
    colds = [run["cold_start_s"] for run in runs]
    edge = {"cold_start_s": statistics.median(colds), "cold_starts_s": colds,
            "rss_mb": statistics.median(run["rss_mb"] for run in runs), "processes": runs[0]["processes"]}
    ratio = statistics.median(cold / floor for cold, floor in zip(colds, floors))
    return edge, statistics.median(floors), floors, ratio


# ---------------------------------------------------------------------------------------------- main


def _kb(n: int) -> str:
    return size_text(n, kb_digits=0, mb_digits=1, mb_from=2 << 20)


def main() -> dict:
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    found = models()
    results = {"models": {}, "ratios": []}
    for name, model in found.items():
        latency = measure_latency(name, model, rounds)
        variables = sum(p.stat().st_size for p in Path(model["tf"]).rglob("*")
                        if p.is_file() and "variables" in p.parts)
        sizes = {v: (Path(model[v]) / TFLITE_FILE).stat().st_size for v in VARIANTS}
        results["models"][name] = {"latency": latency, "sizes": {"tf_variables": variables, **sizes}}
        tf_ms = latency["TF SavedModel"]["median_ms"]
        suffix = "(stand-in model, synthetic data)" if name == "stand-in" else "(real model)"
        print(f"\n{name} {suffix}: per image, 1 thread, median of {latency['TF SavedModel']['n']} calls")
        tf_min = latency["TF SavedModel"]["min_ms"]
        print(f"  {'variant':<16} {'median ms':>9} {'p90 ms':>8} {'min ms':>8} {'× TF':>6} {'× TF min':>8} "
              f"{'size':>9} {'× float':>8}")
        for v in ("TF SavedModel",) + VARIANTS:
            row = latency[v if v.startswith("TF ") else f"TFLite {v}"]
            if v.startswith("TF "):
                size = f"{_kb(variables):>9} {'(vars)':>8}"
            else:
                size = f"{_kb(sizes[v]):>9} {sizes[v] / sizes['none']:>8.2f}"
            label = v if v.startswith("TF ") else f"TFLite {v}"
            print(f"  {label:<16} {row['median_ms']:>9.2f} {row['p90_ms']:>8.2f} {row['min_ms']:>8.2f} "
                  f"{row['median_ms'] / tf_ms:>6.2f} {row['min_ms'] / tf_min:>8.2f} {size}")
        for threads, row in latency["batching"].items():
            print(f"  int8 batch of {row['n']}, {threads}: image by image {row['loop_ms_per_image']:.2f} ms/image, "
                  f"interpreter resized to {row['n']} {row['resized_ms_per_image']:.2f} ms/image")
        results["ratios"] += [
            {"name": f"int8 TFLite ÷ TF latency per image, 1 thread ({name})",
             "value": latency["TFLite int8"]["median_ms"] / tf_ms,
             "target": TARGET_LATENCY, "better": "lower", "unit": "×",
             "note": f"median {latency['TFLite int8']['median_ms']:.2f} vs {tf_ms:.2f} ms; fastest call "
                     f"{latency['TFLite int8']['min_ms']:.2f} vs {tf_min:.2f} ms"},
            {"name": f"int8 ÷ float TFLite size ({name})", "value": sizes["int8"] / sizes["none"],
             "target": TARGET_SIZE,
             "better": "lower", "unit": "×", "note": f"{_kb(sizes['int8'])} vs {_kb(sizes['none'])}"},
        ]

    edge, floor, floors, cold_ratio = edge_cold_starts(found["stand-in"]["int8"])
    cloud = server_footprint("cloud", "standin", block_tensorflow=False)
    results["servers"] = {"edge": edge, "cloud": cloud, "import_mlserver_s": floor, "import_mlserver_runs_s": floors}
    print("\nservers (stand-in, real `mlserver start`, shipped settings; edge with TensorFlow unimportable)")
    print(f"  {'tier':<6} {'cold start s':>12} {'RSS MB':>8} {'processes':>9}")
    for tier, row in (("edge", edge), ("cloud", cloud)):
        print(f"  {tier:<6} {row['cold_start_s']:>12.2f} {row['rss_mb']:>8.0f} {row['processes']:>9}")
    print(f"  edge cold starts {', '.join(f'{c:.2f}' for c in edge['cold_starts_s'])} s, each after "
          f"`python -c 'import mlserver.cli.main'` alone: {', '.join(f'{f:.2f}' for f in floors)} s")
    print(f"  edge cold start ÷ import mlserver: {cold_ratio:.2f} (median of {len(floors)} rounds)")
    results["ratios"] += [
        {"name": "edge server RSS after warm-up", "value": edge["rss_mb"], "target": TARGET_RSS_MB, "better": "lower",
         "unit": " MB", "note": f"cloud {cloud['rss_mb']:.0f} MB"},
        {"name": "edge server cold start to first answer", "value": edge["cold_start_s"], "target": TARGET_COLD_START_S,
         "better": "lower", "unit": " s",
         "note": f"cloud {cloud['cold_start_s']:.1f} s; importing mlserver alone {floor:.1f} s"},
        {"name": "edge cold start ÷ `import mlserver` (the floor no runtime avoids)", "value": cold_ratio,
         "target": TARGET_COLD_VS_IMPORT, "better": "lower", "unit": "×",
         "note": f"median of {COLD_ROUNDS} rounds; medians {edge['cold_start_s']:.2f} vs {floor:.2f} s"},
    ]
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--latency-worker":
        print(json.dumps(latency_worker(json.loads(sys.argv[2]))))
    else:
        main()
