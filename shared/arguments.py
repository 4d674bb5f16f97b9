"""Flags more than one command takes, defined once: what the model takes and returns, when it cannot say itself."""
from __future__ import annotations

from .labels import parse_class_list


def add_model_spec_arguments(parser, whose: str = "model") -> None:
    """--input-scale and --classes (`cassava convert`, `predict`, `serve`, `compare`)."""
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0),
                        help=f"{whose} pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list,
                        help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
