"""The MLServer model repository both tiers' settings.json name: it serves this project's runtimes only, and it is
where a server's MLServer compatibility layer is applied.

MLServer discovers every `model-settings.json` under its folder, recursively, and imports whatever Python class
each one names. A model folder copied onto a device (or unpacked from a model URI) could bring its own
model-settings.json naming its own code; this repository refuses any implementation outside `cassava.`, so a model
directory can only ever be data (a SavedModel or a .tflite), never code.

MLServer constructs it at start, before it builds its data plane and its REST and gRPC servers, with settings.json's
`model_repository_implementation_args`: the guard settings (guard.py). The constructor applies compat.py with them.
"""
from __future__ import annotations

from typing import List

from mlserver.logging import logger
from mlserver.repository.repository import SchemalessModelRepository
from mlserver.settings import ModelSettings

from . import compat
from .guard import GuardSettings

TRUSTED_RUNTIMES = "cassava."


class CassavaModelRepository(SchemalessModelRepository):
    def __init__(self, root: str, **guard):
        super().__init__(root)
        compat.apply(GuardSettings.from_args(guard))

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
