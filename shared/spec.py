"""What a model expects and returns, in one small record shared by every tier.

A spec comes from (later wins): a preset (CropNet), a `cassava-model.json` beside the model, the model's own
signature (input size and keys, detected by the loader), and command-line flags (`--input-scale`, `--classes`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from .errors import CassavaError
from .labels import CROPNET_CLASSES

SPEC_FILE = "cassava-model.json"
MODEL_NAME = "cassava"  # the name both tiers serve the model under (model-settings.json)
CROPNET_HANDLE = "https://tfhub.dev/google/cropnet/classifier/cassava_disease_V1/2"
STANDIN_NOTE = "stand-in model, synthetic data"


@dataclasses.dataclass
class ModelSpec:
    input_size: int = 224  # square H = W, pixels
    input_scale: float = 1.0  # pixel range the model wants: 1 -> [0, 1], 255 -> raw 0..255
    class_names: tuple = CROPNET_CLASSES
    signature: str = "serving_default"
    input_key: Optional[str] = None  # None: the signature's only input
    output_key: Optional[str] = None  # None: the signature's only output
    outputs: str = "probabilities"  # or "logits" (softmax applied after the model)
    description: str = ""  # what the model is, shown on every plot and report
    standin: bool = False  # True for the offline stand-in: never quote its numbers as cassava accuracy
    # Filled by `cassava convert` for TFLite models: how the interpreter's I/O is quantized.
    tflite: Optional[dict] = None
    # The edge escalates an image to the cloud when its confidence (shared/escalation.py) is below this; None: no
    # threshold chosen for this model (`cassava serve edge --escalate-below P` gives one).
    escalate_below: Optional[float] = None
    # What `cassava convert` could promise at that threshold: with 95 % confidence, agreement with the source on the
    # images the edge keeps is >= this (Clopper–Pearson on its held-out images). The edge checks its audits against
    # it (edge/trust.py); None: no promise stored.
    agreement_bound: Optional[float] = None

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.input_size = int(self.input_size)
        self.input_scale = float(self.input_scale)
        if self.input_size < 8:
            raise CassavaError(f"model spec: input_size {self.input_size} is too small")
        if self.input_scale not in (1.0, 255.0):
            raise CassavaError("model spec: input_scale must be 1 ([0,1] floats) or 255 (raw 0-255), "
                               f"not {self.input_scale:g}")
        if self.outputs not in ("probabilities", "logits"):
            raise CassavaError(f"model spec: outputs must be 'probabilities' or 'logits', not {self.outputs!r}")
        if len(self.class_names) < 2:
            raise CassavaError("model spec: at least two class names are needed")
        if self.escalate_below is not None and not 0.0 <= float(self.escalate_below) <= 1.0:
            raise CassavaError(f"model spec: escalate_below is a confidence from 0 to 1, not {self.escalate_below}")
        if self.agreement_bound is not None and not 0.0 <= float(self.agreement_bound) <= 1.0:
            raise CassavaError(f"model spec: agreement_bound is a fraction from 0 to 1, not {self.agreement_bound}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def title(self) -> str:
        """Label for plots and reports; stand-in results always say so."""
        text = self.description or "model"
        if self.standin and STANDIN_NOTE not in text:
            text = f"{text} ({STANDIN_NOTE})"
        return text

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    def save(self, directory) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CassavaError(f"model spec: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**data)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def cropnet_spec() -> ModelSpec:
    return ModelSpec(description="TF Hub CropNet cassava_disease_V1/2")


def read_spec_file(model_path) -> Optional[ModelSpec]:
    """The `cassava-model.json` beside (or inside) a model, if there is one."""
    path = Path(model_path)
    candidates = [path / SPEC_FILE] if path.is_dir() else [path.parent / SPEC_FILE]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return ModelSpec.from_json(json.loads(candidate.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                raise CassavaError(f"{candidate}: not a valid model spec ({exc})") from None
    return None


STANDIN = "standin"
TFLITE_FILE = "model.tflite"  # inside a `cassava convert` folder
REPORT_FILE = "conversion-report.json"  # beside it: how it was converted and verified
# What a converted folder holds changed (m1: cassava-manifest.json and the self-check, shared/manifest.py): caches of
# converted copies carry it in their names, so a copy made by an older `cassava convert` is made anew.
CONVERTED_LAYOUT = "m1"


def model_kind(model: str) -> str:
    """What MODEL names, decided here only: `standin`, `hub` (a TF Hub handle or other URL), `tflite` (a .tflite
    file or a folder holding model.tflite), or `savedmodel` (any other path: a SavedModel dir)."""
    model = str(model)
    if model == STANDIN:
        return "standin"
    if "://" in model:
        return "hub"
    path = Path(model)
    if path.suffix == ".tflite" or (path.is_dir() and (path / TFLITE_FILE).is_file()):
        return "tflite"
    return "savedmodel"


def is_hub_handle(model: str) -> bool:
    return model_kind(model) == "hub"


def is_model_path(model: str) -> bool:
    """MODEL names a file or folder (MLServer resolves it relative to model-settings.json), not `standin` or a URL."""
    return model_kind(model) in ("tflite", "savedmodel")


def check_hub_handle(model: str) -> None:
    """Models are fetched over https only: a plain-http handle could be swapped in transit."""
    if not model.startswith("https://"):
        raise CassavaError(f"refusing to fetch model over an insecure or unknown scheme: {model} "
                           "(use an https:// TF Hub handle)")


def base_spec(model: str) -> ModelSpec:
    """The spec before flags: the preset for a TF Hub handle, else the file beside a local model."""
    if is_hub_handle(model):
        return cropnet_spec() if model.rstrip("/") == CROPNET_HANDLE else ModelSpec(description=model)
    found = read_spec_file(model)
    if found is not None:
        return found
    path = Path(model)
    # `.../cassava-cnn-256/saved_model` says more as its last two parts than as `saved_model`
    name = "/".join(path.parts[-2:]) if path.name in ("saved_model", TFLITE_FILE) else path.name
    return ModelSpec(description=name or str(model))


def apply_overrides(spec: ModelSpec, input_scale=None, classes=None, input_size=None) -> ModelSpec:
    return spec.replace(input_scale=input_scale, class_names=classes, input_size=input_size)


def check_interface(spec: ModelSpec, input_shape, num_outputs: int, where: str) -> None:
    """Fail with one clear line when the model's own interface contradicts its spec."""
    if num_outputs != spec.num_classes:
        raise CassavaError(
            f"{where}: model returns {num_outputs} scores but the spec names {spec.num_classes} classes "
            f"({','.join(spec.class_names)}); pass --classes with {num_outputs} names or fix {SPEC_FILE}"
        )
    if input_shape is not None:
        dims = [d for d in list(input_shape)[1:3]]
        if all(d is not None for d in dims) and (dims[0] != spec.input_size or dims[1] != spec.input_size):
            raise CassavaError(f"{where}: model input is {dims[0]}x{dims[1]} "
                               f"but the spec says {spec.input_size}x{spec.input_size}")
