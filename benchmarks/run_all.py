"""`make bench`: run every benchmark in benchmarks/ and print one table of ratios against their targets.

Each benchmark module has `main() -> dict` and prints its own table. The ratios it reports (see README.md for the
shape) are collected here into one table with PASS/MISS, with the machine and the date, and written to
benchmarks/latest.md. A module that is absent is "not run"; one that fails is "FAILED" with its one-line reason,
and the others still run. Exit code: 0 when every present module ran (a MISS is a finding, not a crash), 1 if one
failed.

    python benchmarks/run_all.py [--only bench_edge_throughput] [--out benchmarks/latest.md]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (module in benchmarks/, what it measures)
MODULES = (
    ("bench_cloud", "cloud serving: wire bytes and images/s per input kind; MLServer ÷ in-process"),
    ("bench_edge", "edge vs cloud: latency, size, RSS, cold start"),
    ("bench_client", "end to end: the client's default wire format vs the tutorial's float JSON"),
    ("bench_edge_throughput", "edge server images/s with 1, 2 and 4 concurrent clients"),
    ("bench_swap", "model store hot swap under 4 clients: rename → first answer, peak ÷ steady process-tree RSS"),
    ("bench_quant",
     "real model: plain int8 vs --target-agreement 0.99 on 150 held-out photos (agreement, size, latency)"),
    ("bench_images", "container image sizes, edge process tree RSS (native) and edge container memory (qemu)"),
    ("bench_standin", "the stand-in's first build (fresh process, empty cache): fast ÷ v1 recipe time, accuracy"),
    ("bench_page", "the phone page's scaling in chromium: same answer as the API for the original photo, bytes sent"),
    ("bench_budget", "decoding budget: pixel-bomb requests, RSS after a burst, latency under bombs, 12 MP JPEG"),
    ("bench_joint", "real model: the edge escalating hard photos to the cloud on cassava-more's held-out half "
                    "(agreement with TF, fraction escalated, edge-answered latency, bytes per escalation)"),
)


class _Tee(io.TextIOBase):
    """Print as usual and keep a copy (each module's own table goes into latest.md too)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def run_module(name: str) -> Dict:
    path = HERE / f"{name}.py"
    if not path.is_file():
        return {"status": "not run", "reason": f"benchmarks/{name}.py is absent"}
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    tee = _Tee(sys.stdout)
    started = time.time()
    saved_argv = sys.argv
    sys.argv = [str(path)]  # a module's own argparse must not see run_all's arguments
    try:
        with contextlib.redirect_stdout(tee):
            module = importlib.import_module(name)
            if not hasattr(module, "main"):
                raise RuntimeError(f"{name}.py has no main()")
            result = module.main()
        status, reason = "ok", None
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        if exc.code in (0, None):  # a module that exits cleanly without returning: it ran
            status, reason, result = "ok", None, None
        else:
            status, reason, result = "FAILED", f"exited with {exc.code}", None
    except BaseException as exc:  # SystemExit from a module's argparse too: report it, keep going
        traceback.print_exc(file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        status, reason, result = "FAILED", f"{type(exc).__name__}: {first}", None
    finally:
        sys.argv = saved_argv
    return {"status": status, "reason": reason, "result": result if isinstance(result, dict) else None,
            "seconds": round(time.time() - started, 1), "output": tee.copy.getvalue()}


def find_ratios(value, path: str = "") -> List[Dict]:
    """Every ratio a module reported: dicts with `value` and `target`, found anywhere in its result.

    A ratio: {"name": ..., "value": float, "target": float, "better": "higher"|"lower", "unit": "x", "note": ...};
    `better` defaults to "higher"; a `pass` bool, when given, overrides the comparison."""
    found = []
    if isinstance(value, dict):
        if "value" in value and "target" in value:
            return [{**value, "name": value.get("name") or path or "?"}]
        found += _paired_targets(value)
        for key, item in value.items():
            found += find_ratios(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += find_ratios(item, f"{path}[{index}]")
    return found


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _paired_targets(result: Dict) -> List[Dict]:
    """The other shape a module may use: `target_speedup: 3.0` beside `speedup_default_vs_tutorial: 4.1` (one
    numeric key starting or ending with the word after `target_`), with an optional `meets_target` bool."""
    found = []
    for key, target in result.items():
        if not (isinstance(key, str) and key.startswith("target_") and _number(target)):
            continue
        word = key[len("target_"):]
        partners = [k for k, v in result.items() if isinstance(k, str) and k != key and not k.startswith("target_")
                    and (k.startswith(word) or k.endswith(word)) and _number(v)]
        if len(partners) == 1:
            ratio = {"name": partners[0].replace("_", " "), "value": result[partners[0]], "target": target,
                     "better": "higher", "unit": "×"}
            if isinstance(result.get("meets_target"), bool):
                ratio["pass"] = result["meets_target"]
            found.append(ratio)
    return found


def verdict(ratio: Dict) -> str:
    if isinstance(ratio.get("pass"), bool):
        return "PASS" if ratio["pass"] else "MISS"
    value, target = ratio.get("value"), ratio.get("target")
    if not _number(value) or not _number(target) or math.isnan(value):
        return "—"
    ok = value <= target if ratio.get("better", "higher") == "lower" else value >= target
    return "PASS" if ok else "MISS"


def _fmt(value, unit: str = "") -> str:
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    elif value is None:
        text = "—"
    else:
        text = str(value)
    return f"{text}{unit}" if text != "—" else text


def table_rows(results: Dict[str, Dict]) -> List[List[str]]:
    rows = []
    for name, what in MODULES:
        outcome = results.get(name)
        if outcome is None:
            continue
        if outcome["status"] != "ok":
            status = outcome["status"] + (f": {outcome['reason']}" if outcome.get("reason") else "")
            rows.append([name, status, "—", "—", "—"])
            continue
        ratios = find_ratios(outcome["result"] or {})
        if not ratios:
            rows.append([name, "(ran; reported no ratio with a target — see its own table)", "—", "—", "—"])
        for ratio in ratios:
            unit = ratio.get("unit", "")
            op = "≤" if ratio.get("better", "higher") == "lower" else "≥"
            target = f"{op} {_fmt(ratio.get('target'), unit)}" if ratio.get("target") is not None else "—"
            measure = ratio["name"] + (f" ({ratio['note']})" if ratio.get("note") else "")
            rows.append([name, measure, _fmt(ratio.get("value"), unit), target, verdict(ratio)])
    return rows


def render_text(rows: List[List[str]]) -> str:
    header = ["benchmark", "measure", "value", "target", "result"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def render_markdown(rows, results, machine: str, date: str) -> str:
    lines = ["# Benchmark results", "", f"- **Date:** {date}", f"- **Machine:** {machine}",
             "- **Command:** `make bench` (`python benchmarks/run_all.py`)", "",
             "Ratios are measured on this machine; targets are each benchmark's own (see benchmarks/README.md). "
             "Numbers from the stand-in model measure the serving machinery, not cassava accuracy "
             "(stand-in model, synthetic data).", "",
             "| benchmark | measure | value | target | result |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += [""]
    for name, what in MODULES:
        outcome = results.get(name)
        if not outcome:
            continue
        lines += [f"## {name}", "", f"{what}. Status: {outcome['status']}"
                  + (f" ({outcome['reason']})" if outcome.get("reason") else "")
                  + (f", {outcome['seconds']} s" if outcome.get("seconds") is not None else "") + ".", ""]
        if outcome.get("output", "").strip():
            lines += ["```", outcome["output"].rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", metavar="MODULE", help="run only this module (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "latest.md",
                        help="markdown results (default benchmarks/latest.md)")
    args = parser.parse_args(argv)
    names = [n for n, _ in MODULES]
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)} (choose from {', '.join(names)})")

    sys.path.insert(0, str(REPO))
    from cassava.shared.evaluate.report import machine_line

    machine = machine_line()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"Benchmarks on {machine}, {date}\n", flush=True)
    results = {}
    for name, what in MODULES:
        if args.only and name not in args.only:
            continue
        print(f"=== {name}: {what}", flush=True)
        results[name] = run_module(name)
        outcome = results[name]
        print(f"=== {name}: {outcome['status']}" + (f" ({outcome['reason']})" if outcome.get("reason") else "")
              + (f" in {outcome['seconds']} s" if outcome.get("seconds") is not None else "") + "\n", flush=True)

    rows = table_rows(results)
    print(f"Summary — {machine}, {date}")
    print(render_text(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(rows, results, machine, date) + "\n")
    print(f"\nwritten: {args.out}")
    return 1 if any(o["status"] == "FAILED" for o in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
