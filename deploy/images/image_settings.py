"""Rewrite a tier's settings for its container image (run at build time: image_settings.py /opt/cassava/TIER).

MLServer takes values from settings.json / model-settings.json before MLSERVER_* variables. The image's copies
therefore drop what the environment must be able to set: host and ports (the image listens on 0.0.0.0, Seldon moves
the ports to 9000/9500) and the model's `uri` and `version` (MLSERVER_MODEL_URI: /mnt/models, where Seldon's storage
initializer and `docker run -v` put the model). Everything else is kept as the repository ships it.
"""
import json
import sys
from pathlib import Path

folder = Path(sys.argv[1])
settings_file, model_file = folder / "settings.json", folder / "model-settings.json"
settings = json.loads(settings_file.read_text())
for key in ("host", "http_port", "grpc_port", "metrics_port", "metrics_dir"):
    settings.pop(key, None)
settings_file.write_text(json.dumps(settings, indent=2) + "\n")

model = json.loads(model_file.read_text())
parameters = model.setdefault("parameters", {})
for key in ("uri", "version"):
    parameters.pop(key, None)
parameters.setdefault("extra", {})  # a present `parameters` object is what lets MLSERVER_MODEL_URI fill in the uri
model_file.write_text(json.dumps(model, indent=2) + "\n")
