"""Flags more than one command takes, defined once: what the model takes and returns, when it cannot say itself."""
from __future__ import annotations

from .escalation import DEFAULT_AUDIT_RATE
from .labels import parse_class_list


def add_model_spec_arguments(parser, whose: str = "model") -> None:
    """--input-scale and --classes (`cassava convert`, `predict`, `serve`, `compare`)."""
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0),
                        help=f"{whose} pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list,
                        help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")


def add_escalation_arguments(parser, items: str, escalate_to_help: str, audit_default=None) -> None:
    """--escalate-to, --escalate-below and --audit-rate (`cassava serve edge`: images; `cassava watch`: photos)."""
    parser.add_argument("--escalate-to", metavar="URL", help=escalate_to_help)
    parser.add_argument("--escalate-below", type=float, metavar="P",
                        help=f"--escalate-to: {items} whose top probability on the edge is below P are hard "
                             "(default: the model's escalate_below in cassava-model.json, chosen by cassava convert)")
    parser.add_argument("--audit-rate", type=float, default=audit_default, metavar="R",
                        help=f"--escalate-to: also send this fraction of the confident {items} to the cloud, to "
                             f"measure the edge's agreement where it was sure (default {DEFAULT_AUDIT_RATE})")
