"""`cassava convert`: the flags, one call to `convert()`, and what a person reads afterwards."""
from __future__ import annotations

import sys
from pathlib import Path

from cassava.edge.gate.convert import gate_files, gate_text
from cassava.shared.arguments import add_model_spec_arguments
from cassava.shared.manifest import MANIFEST_FILE, SELFCHECK_FILE
from cassava.shared.spec import REPORT_FILE, SPEC_FILE, TFLITE_FILE

from .options import DEFAULT_ESCALATION_TARGET, IO_TYPES, MIN_AGREEMENT, MODES, ConvertOptions
from .pipeline import Refused, convert
from .report import table
from .verify import agreement_text


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="TF Hub handle, SavedModel dir, or 'standin' (stand-in model, synthetic data)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help=f"folder for {TFLITE_FILE}, {SPEC_FILE} and the report")
    parser.add_argument("--quantize", choices=MODES, default="int8",
                        help="int8: full-integer (needs calibration images); dynamic: int8 weights; "
                             "float16: half-size weights; none: float32")
    parser.add_argument("--calibration", nargs="+", metavar="DATA",
                        help="images calibrating int8 (folder, files, glob, standin:train); "
                             "default for the stand-in: standin:train")
    parser.add_argument("--samples", type=int,
                        help="calibration images (default 200; when one DATA must both calibrate and verify, at most "
                             "half of it, so that the other half verifies)")
    parser.add_argument("--verify-data", nargs="+", metavar="DATA",
                        help="held-out images to compare source and TFLite on (default: the stand-in's validation "
                             "split; else the --calibration images not used for calibration: one folder is split in "
                             "two, stratified by class, and the report says so)")
    parser.add_argument("--verify-samples", type=int, default=0,
                        help="verify on at most this many images (0 = every held-out image)")
    parser.add_argument("--io", choices=IO_TYPES, help="int8 model input/output type (default uint8; other modes, and "
                                                      "--target-agreement, are float32)")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                        help=f"refuse the copy when the 95%% Wilson interval of its top-1 agreement with the source "
                             f"lies wholly below this (why {MIN_AGREEMENT}: healthy int8 copies of a real cassava "
                             "CNN agreed on 94-97%% of 150 held-out photos, broken ones on under 50%%; see "
                             "edge/README.md)")
    parser.add_argument("--target-agreement", type=float, metavar="A",
                        help="int8: keep the layers that cost agreement in float32 (TFLite's QuantizationDebugger, "
                             "fewest first) until held-out top-1 agreement reaches A, e.g. 0.99; falls back to "
                             "dynamic-range when that is the smaller copy meeting A. Reports what was kept and its "
                             "cost")
    parser.add_argument("--escalation-target", type=float, default=DEFAULT_ESCALATION_TARGET, metavar="T",
                        help="store in the spec the confidence threshold (escalate_below) below which the edge sends "
                             "an image to the cloud: the one escalating the fewest held-out images while agreement "
                             f"with the source reaches T (default {DEFAULT_ESCALATION_TARGET}; "
                             "docs/joint-inference.md)")
    parser.add_argument("--plain", dest="escalation_search", action="store_false",
                        help="int8: the plain full-integer copy (uint8 I/O). Default: of plain int8 and int8 with the "
                             "layers that cost most agreement kept in float32, the copy that reaches "
                             "--escalation-target sending the fewest held-out images to the cloud, within 1.5x plain "
                             "int8's latency and 1 MB (the report lists the candidates weighed)")
    add_model_spec_arguments(parser)
    parser.add_argument("--allow-float-fallback", action="store_true",
                        help="int8: keep ops that have no int8 kernel in float32 instead of failing")
    parser.add_argument("--select-tf-ops", action="store_true",
                        help="allow TensorFlow ops TFLite lacks (the edge then needs the Flex delegate, which "
                             "ai-edge-litert and tflite-runtime do not include)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-gate", dest="gate", action="store_false",
                        help="no leaf gate (by default one is built: photos unlike the cassava photos -> unknown)")
    parser.add_argument("--gate-alpha", type=float, default=0.02, metavar="A",
                        help="the fraction of real cassava leaves the gate may turn away (default 0.02)")
    parser.add_argument("--gate-negatives", metavar="DIR",
                        help="photos that are not cassava leaves, one sub-folder per kind, to report the gate's "
                             "rejection on (default ../shared/data/not-cassava when present)")


def run(args) -> int:
    options = ConvertOptions.from_args(args)
    try:
        report = convert(args.model, args.out, options)
    except Refused as refused:
        print(table(refused.report))  # what was measured, before the one-line error
        raise
    print(table(report))
    if report["reason"]:
        print(f"warning: {report['reason']}", file=sys.stderr)
    verification, selective = report["verification"], report["selective"]
    if verification and verification["top1_agreement"] < options.min_agreement:
        print(f"warning: top-1 agreement {agreement_text(verification)} is below --min-agreement "
              f"{options.min_agreement:.0%}, but {verification['images']} images cannot show that it truly is: "
              "verify on more held-out photos", file=sys.stderr)
    if selective and not selective["met"]:
        print(f"warning: no copy tried reaches --target-agreement {options.target_agreement:.1%}; wrote the best one "
              f"({selective['chosen']}, {agreement_text(verification)})", file=sys.stderr)
    gate = report.get("leaf_gate")
    if gate:
        print(gate_text(gate))
    written = [args.out / name for name in (TFLITE_FILE, SPEC_FILE, REPORT_FILE, MANIFEST_FILE, SELFCHECK_FILE,
                                            *(p.name for p in gate_files(args.out))) if (args.out / name).is_file()]
    print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}")
    return 0
