"""Read a PyTorch state dict (`torch.save`) into numpy arrays, without PyTorch.

Two formats exist: the legacy one (a run of pickles: magic number, protocol version, system info, the state dict whose
tensors point at storages by persistent id, the storage keys, then each storage's raw bytes after an int64 element
count) and the zip one (`archive/data.pkl` with the same persistent ids, each storage in `archive/data/<key>`). Only
the few classes a state dict names are allowed to load, so a crafted file cannot run code.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Storage:
    """A storage named in the pickle: its dtype and key; its bytes arrive after (legacy) or from the zip."""

    def __init__(self, dtype, key: str):
        self.dtype, self.key, self.array = np.dtype(dtype), key, None


def _rebuild_tensor(storage: _Storage, offset, size, stride, *_ignored):
    # The tensor is built lazily: in the legacy format the storage's bytes come after the pickle that names it.
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, handle, storages: Dict[str, _Storage]):
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"not a plain state dict: it names {module}.{name}")

    def persistent_load(self, saved_id):
        kind, storage_type, key = saved_id[0], saved_id[1], str(saved_id[2])
        if kind != "storage":
            raise pickle.UnpicklingError(f"not a plain state dict: persistent id {kind!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(STORAGE_DTYPES[storage_type], key)
        return self.storages[key]


def _materialise(state, storages) -> Dict[str, np.ndarray]:
    arrays = {}
    for name, (_, storage, offset, size, stride) in state.items():
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage.array[offset:], shape=size,
                                               strides=[s * itemsize for s in stride])
        arrays[name] = np.array(view)  # a copy: the storages can go
    return arrays


def _read_legacy(handle) -> Dict[str, np.ndarray]:
    if pickle.load(handle) != LEGACY_MAGIC:
        raise ValueError("not a PyTorch file (magic number)")
    pickle.load(handle)  # protocol version
    pickle.load(handle)  # system info (little endian, type sizes)
    storages: Dict[str, _Storage] = {}
    state = _StateDictUnpickler(handle, storages).load()
    for key in pickle.load(handle):
        storage = storages[str(key)]
        count = int(np.frombuffer(handle.read(8), dtype="<i8")[0])
        storage.array = np.frombuffer(handle.read(count * storage.dtype.itemsize), dtype=storage.dtype)
    return _materialise(state, storages)


def _read_zip(path: Path) -> Dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = names[0].split("/")[0]
        storages: Dict[str, _Storage] = {}
        state = _StateDictUnpickler(io.BytesIO(archive.read(f"{prefix}/data.pkl")), storages).load()
        for storage in storages.values():
            storage.array = np.frombuffer(archive.read(f"{prefix}/data/{storage.key}"), dtype=storage.dtype)
    return _materialise(state, storages)


def read_state_dict(path: Path) -> Dict[str, np.ndarray]:
    """name -> numpy array, for a file written by `torch.save(model.state_dict(), path)`."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as handle:
        return _read_legacy(handle)
