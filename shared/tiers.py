"""The two tiers in one registry: the package that holds each tier's MLServer settings, how it loads a model,
and its default ports, read from the tier's own `settings.json` (the file `mlserver start cloud/` reads).

Adding a tier: a package with `model-settings.json`, `settings.json`, a runtime (a subclass of
`cassava.shared.server.runtime.ImageClassifierRuntime`) and a loader; then one line in TIERS.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from importlib import resources
from pathlib import Path
from typing import Tuple

from .errors import CassavaError
from .spec import model_kind


@dataclasses.dataclass(frozen=True)
class TierInfo:
    name: str
    package: str  # folder with model-settings.json + settings.json
    loader: str  # "module:function": MODEL -> Classifier (the module is imported only when a model loads)
    extra: str  # the pip extra that installs it

    def folder(self) -> Path:
        try:
            folder = Path(str(resources.files(self.package)))
        except ModuleNotFoundError:
            raise CassavaError(f"the {self.name} tier is not installed "
                               f"(pip install 'cassava-cloud-edge[{self.extra}]')") from None
        if not (folder / "model-settings.json").is_file():
            raise CassavaError(f"{folder}: no model-settings.json for the {self.name} tier")
        return folder

    def settings(self) -> dict:
        return json.loads((self.folder() / "settings.json").read_text())

    def model_settings(self) -> dict:
        return json.loads((self.folder() / "model-settings.json").read_text())

    @property
    def ports(self) -> Tuple[int, int, int]:
        """(HTTP, gRPC, metrics) as shipped: cloud 8080/8081/8082, edge 9080/9081/9082."""
        settings = self.settings()
        return settings["http_port"], settings["grpc_port"], settings["metrics_port"]

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.ports[0]}"

    def load_classifier(self, model: str, **options):
        return self.function(self.loader)(model, **options)

    def function(self, target: str):
        """"module:function" in this tier, imported now, or one line saying which extra installs it."""
        module_name, _, function = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name and exc.name.startswith("cassava"):
                raise
            raise CassavaError(f"the {self.name} tier needs {exc.name}: "
                               f"pip install 'cassava-cloud-edge[{self.extra}]'") from None
        return getattr(module, function)


TIERS = {
    "cloud": TierInfo("cloud", "cassava.cloud", "cassava.cloud.model:load_tf_classifier", "cloud"),
    "edge": TierInfo("edge", "cassava.edge", "cassava.edge.interpreter:load_tflite_classifier", "edge"),
}


def tier_for_model(model: str) -> TierInfo:
    """TFLite files run on the edge's interpreter; SavedModels, TF Hub handles and the stand-in on TensorFlow."""
    return TIERS["edge"] if model_kind(model) == "tflite" else TIERS["cloud"]


# What shared/ code calls inside a tier, by name: the one door from shared/ up into the tiers.
TOOLS = {
    "convert": ("edge", "cassava.edge.convert.pipeline:convert"),  # convert(model, out, ConvertOptions, notify)
    "convert_options": ("edge", "cassava.edge.convert.options:ConvertOptions"),
    "resolve_model_path": ("cloud", "cassava.cloud.model:resolve_model_path"),  # MODEL -> its SavedModel folder
    "escalation_preflight": ("edge", "cassava.edge.escalate:preflight"),  # `serve edge --escalate-to` checks
    "leaf_gate": ("edge", "cassava.edge.gate.gate:load_gate"),  # a folder's leaf gate, on either tier (LiteRT or TF)
    "has_gate": ("edge", "cassava.edge.gate.gate:has_gate"),
}


def tool(name: str):
    tier, target = TOOLS[name]
    return TIERS[tier].function(target)
