"""`cassava demo`: the offline main job on the stand-in model (stand-in model, synthetic data)."""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where plots and reports go")
    parser.add_argument("-n", type=int, default=16, help="images to classify")


def run(args) -> int:
    from cassava.shared import client

    args.out.mkdir(parents=True, exist_ok=True)
    predict = ["predict", "--in-process", "--model", "standin", "--data", "standin", "-n", str(args.n),
               "--plot", str(args.out / "predictions-in-process.png"), "--json", str(args.out / "predictions-in-process.json")]
    from cassava.cli import build_parser

    return client.run(build_parser().parse_args(predict))
