"""The MLServer model repository both tiers' settings.json name: it serves this project's runtimes only.

MLServer discovers every `model-settings.json` under its folder, recursively, and imports whatever Python class
each one names. A model folder copied onto a device (or unpacked from a model URI) could bring its own
model-settings.json naming its own code; this repository refuses any implementation outside `cassava.`, so a model
directory can only ever be data (a SavedModel or a .tflite), never code.

It is also the one hook MLServer runs before it builds its REST app (settings.json is read first), so importing
this module is where the REST layer (rest.py) and the other MLServer patches (conformance.py) are installed.
"""
from __future__ import annotations

from typing import List

from mlserver.logging import logger
from mlserver.repository.repository import SchemalessModelRepository
from mlserver.settings import ModelSettings

from . import conformance, rest

TRUSTED_RUNTIMES = "cassava."

rest.install()
conformance.install()


class CassavaModelRepository(SchemalessModelRepository):
    async def list(self) -> List[ModelSettings]:
        trusted = []
        for model_settings in await super().list():
            implementation = model_settings.implementation_ or ""
            if implementation.startswith(TRUSTED_RUNTIMES):
                trusted.append(model_settings)
            else:
                logger.error(
                    f"Refusing model {model_settings.name!r}: its implementation {implementation!r} is not one of this "
                    f"project's runtimes ({TRUSTED_RUNTIMES}*); model folders may hold SavedModel or TFLite files only."
                )
        return trusted
