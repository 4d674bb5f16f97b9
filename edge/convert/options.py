"""What a conversion is asked to do: the options (the command's flags, or a caller's), checked before TF loads."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from cassava.shared.errors import CassavaError

MODES = ("int8", "dynamic", "float16", "none")
IO_TYPES = ("uint8", "int8", "float32")
VARIANT_NAMES = {"int8": "int8", "dynamic": "dynamic-range int8 weights", "float16": "float16 weights",
                 "none": "float32"}
# The refusal floor, chosen from measurements (edge/README.md): int8 copies of the real 256-px cassava CNN agreed with
# it on 141-145 of 150 held-out photos (94-97 %), dynamic-range on 147-149, float16 on 150; the failures this gate
# exists for agree on under 50 % (NaN from a Keras 3 model saved the wrong way, calibration on black images).
MIN_AGREEMENT = 0.95
DEFAULT_SAMPLES = 200
# The agreement with the source the stored escalation threshold aims at (`escalate_below`, docs/joint-inference.md):
# 99.5 %, the target, about the agreement float16 copies reach (150/150 held-out photos) at a fraction of the
# traffic of sending everything. On the usual 150-300 verification images it means "every held-out disagreement is
# escalated" (149/150 = 99.3 % misses it), the most a sample that size can promise of new photos.
DEFAULT_ESCALATION_TARGET = 0.995


@dataclasses.dataclass
class ConvertOptions:
    """Everything but the model and the output folder; the same names as the command's flags."""
    quantize: str = "int8"
    calibration: Optional[Sequence[str]] = None
    samples: Optional[int] = None
    verify_data: Optional[Sequence[str]] = None
    verify_samples: int = 0
    io: Optional[str] = None
    min_agreement: float = MIN_AGREEMENT
    target_agreement: Optional[float] = None
    # `cassava convert` searches by default (--plain: no); a ConvertOptions made in code (benchmarks) does not
    escalation_search: bool = False
    escalation_target: float = DEFAULT_ESCALATION_TARGET
    input_scale: Optional[float] = None
    classes: Optional[Sequence[str]] = None
    allow_float_fallback: bool = False
    select_tf_ops: bool = False
    quiet: bool = False
    gate: bool = True  # the leaf gate (edge/gate): `unknown` for photos that do not look like a cassava leaf
    gate_alpha: float = 0.02
    gate_negatives: Optional[str] = None

    @classmethod
    def from_args(cls, args) -> "ConvertOptions":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def as_dict(self) -> dict:
        """JSON-ready: what a cache stamp compares."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def check_arguments(args) -> str:
    """-> the I/O type; every contradiction is one line before TensorFlow loads. `args`: ConvertOptions or the
    command's namespace."""
    if args.samples is not None and args.samples < 1:
        raise CassavaError("--samples must be at least 1")
    if args.verify_samples < 0:
        raise CassavaError("--verify-samples must be 0 (all) or more")
    if not 0.0 <= args.min_agreement <= 1.0:
        raise CassavaError("--min-agreement is a fraction between 0 and 1, e.g. 0.95")
    if not 0.0 < args.gate_alpha < 1.0:
        raise CassavaError("--gate-alpha is a fraction between 0 and 1, e.g. 0.02")
    if not 0.0 < args.escalation_target <= 1.0:
        raise CassavaError("--escalation-target is a fraction between 0 and 1, e.g. 0.995")
    if args.target_agreement is not None:
        if not 0.0 < args.target_agreement <= 1.0:
            raise CassavaError("--target-agreement is a fraction between 0 and 1, e.g. 0.99")
        if args.quantize != "int8":
            raise CassavaError("--target-agreement applies to --quantize int8 (it decides which layers stay in float)")
        if args.io not in (None, "float32"):
            raise CassavaError(f"--io {args.io}: --target-agreement writes float32 I/O models (TFLite's "
                               "QuantizationDebugger quantizes inside the model, not at its edges)")
        return "float32"
    if args.quantize != "int8":
        if args.io not in (None, "float32"):
            raise CassavaError(f"--io {args.io} needs --quantize int8 "
                               "(only full-integer models have integer input and output)")
        if args.allow_float_fallback:
            raise CassavaError("--allow-float-fallback applies to --quantize int8 only")
        return "float32"
    return args.io or "uint8"
