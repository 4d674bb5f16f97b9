"""The part of an MLServer runtime both tiers share. A request goes through named stages:

  validate  one input, a known name, rank and batch size within limits        (protocol/v2.py, 4xx when not)
  decode    photos -> pixels, pixels/floats -> model input, values in range   (protocol/v2.py + images.py)
  batch     concurrent requests' images concatenated, after each was checked  (batching.py)
  predict   the tier's classifier on the batch                               (cloud/model.py, edge/interpreter.py)
  encode    class_ids, probabilities, labels as a V2 response                 (protocol/v2.py)

A tier's runtime is a small subclass that says how to load its classifier (TF in `cassava.cloud.runtime`, TFLite
in `cassava.edge.runtime`); requests and responses are identical on both, so one client talks to either.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataTensor, Parameters
from prometheus_client import REGISTRY, Counter, Histogram

from ..classifier import Classifier
from ..errors import CassavaError
from ..labels import parse_class_list
from ..policy import UNKNOWN, EscalationPolicy, unknown_class_id
from ..protocol import LEAF_SCORE
from ..protocol.v2 import (
    DEFAULT_MAX_REQUEST_IMAGES,
    BadRequest,
    build_response,
    check_request,
    metadata_inputs,
    metadata_outputs,
    requested_outputs,
)
from ..spec import is_model_path
from ..tiers import tool
from . import compat
from .batching import MicroBatcher
from .decoding import PhotoDecoder, keep_large_blocks_in_mmap
from .process import LOAD_FAILURE_ENV
from .store import WATCH_INTERVAL_S, StoreWatcher, is_store
from .store import metrics as store_metrics

log = logging.getLogger("cassava.runtime")

_METRICS = {}


def _metrics():
    """Created on first load, not at import: MLServer switches prometheus to multi-process mode for workers first.
    Registered in prometheus' default registry, which MLServer's metrics endpoint serves."""
    if not _METRICS:
        _METRICS["predictions"] = Counter(
            "cassava_predictions", "Images classified, by predicted class", ["model_name", "tier", "class_name"],
            registry=REGISTRY)
        _METRICS["batch_images"] = Histogram(
            "cassava_batch_images", "Images per model call after micro-batching", ["model_name", "tier"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
        _METRICS["unknown"] = Counter(
            "cassava_unknown", "Images answered `unknown` (the leaf gate or the model's own unknown class): a rising "
            "rate is a drift signal", ["model_name", "tier"], registry=REGISTRY)
    return _METRICS


class Serving:
    """The model version that answers a request: its classifier, micro-batcher and version name, taken once when the
    request arrives (`with runtime._serving as serving:`), so a store swap never mixes two versions in one answer.
    It counts the requests using it, so a swapped-out version is closed only after the last one is answered."""

    def __init__(self, classifier: Classifier, batcher: MicroBatcher, version: Optional[str]):
        self.classifier, self.batcher, self.version = classifier, batcher, version
        self._users = 0  # requests between arrival and answer (event-loop only: no lock needed)

    def __enter__(self) -> "Serving":
        self._users += 1
        return self

    def __exit__(self, *exc) -> None:
        self._users -= 1

    async def drain(self, timeout: float = 120.0) -> bool:
        """Wait until no request uses this version. -> False when some still did after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._users and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not self._users


class ImageClassifierRuntime(MLModel):
    tier = "?"
    _serving: Optional[Serving] = None
    gate = None  # the leaf gate (cassava.edge.gate.gate.LeafGate), the same on both tiers; None: none
    policy = EscalationPolicy()  # what `unknown` means here (shared/policy.py), with the gate's threshold

    @property
    def classifier(self) -> Classifier:
        return self._serving.classifier

    def load_classifier(self, uri: str, extra: dict) -> Classifier:
        raise NotImplementedError

    @staticmethod
    def spec_overrides(extra: dict) -> dict:
        """Model-spec overrides a model-settings.json may carry in `parameters.extra` (what --input-scale and
        --classes say on the command line), beside the model's own cassava-model.json."""
        classes = extra.get("classes")
        if isinstance(classes, str):
            classes = parse_class_list(classes)
        return {"input_scale": extra.get("input_scale"), "classes": classes}

    def _extra(self) -> dict:
        parameters = self.settings.parameters
        return dict(parameters.extra or {}) if parameters and parameters.extra else {}

    async def _model_uri(self) -> str:
        from mlserver.utils import get_model_uri

        uri = self.settings.parameters.uri if self.settings.parameters else None
        if not uri:
            raise CassavaError(f"model {self.name}: parameters.uri is not set in model-settings.json")
        if not is_model_path(uri):
            return uri
        try:
            return await get_model_uri(self.settings)  # relative paths are relative to model-settings.json
        except Exception:
            raise CassavaError(f"model {self.name}: model file or folder not found: {uri}") from None

    async def load(self) -> bool:
        try:
            ready = await self._load()
        except Exception as exc:
            report_load_failure(exc)
            await self.unload()  # MLServer does not unload a model that failed to load: stop what did start
            raise
        if self._store:
            self._store.start(self._swap)  # only once the whole model (a tier's additions too) is ready
        return ready

    async def _load(self) -> bool:
        compat.check_in_force()  # fail closed: no model, no server, if MLServer was built without cassava's layers
        extra = self._extra()
        uri = await self._model_uri()
        if is_store(uri):
            classifier, version = await self._open_store(uri, extra)
        else:
            classifier, version = await asyncio.to_thread(self.load_classifier, uri, extra), self.version
            store_metrics()["version"].labels(self.name, self.tier).set(0)  # 0: not from a store
        spec = classifier.spec
        self.max_request_images = int(extra.get("max_request_images", DEFAULT_MAX_REQUEST_IMAGES))
        self.decoder = PhotoDecoder.from_extra(extra)  # pixel limits and the decode budget (budget.py)
        keep_large_blocks_in_mmap()
        self._serving = Serving(classifier, self._new_batcher(classifier, extra), version)
        self.gate = await asyncio.to_thread(self._load_gate, uri, extra)
        self.policy = EscalationPolicy(gate_threshold=self.gate.threshold if self.gate else None)
        self.inputs = metadata_inputs(spec)
        self.outputs = self.declared_outputs(spec)
        log.info("model %s ready on the %s tier: %s, %dx%d input, classes %s", self.name, self.tier, spec.title,
                 spec.input_size, spec.input_size, ",".join(spec.class_names))
        return True

    def _load_gate(self, uri: str, extra: dict):
        """The leaf gate: `gate` in model-settings `extra` (a folder written by `cassava convert`; the cloud's way
        to run the very gate the edge runs), else the model folder's own; `no_gate`: none (asked for)."""
        if extra.get("no_gate"):
            return None
        folder = extra.get("gate")
        if folder is None:
            if not is_model_path(uri) or is_store(uri):
                return None
            path = Path(uri)
            folder = path if path.is_dir() else path.parent
            if not tool("has_gate")(folder):
                return None
        gate = tool("leaf_gate")(folder, pool_size=int(extra.get("pool_size") or os.cpu_count() or 1))
        log.info("model %s: leaf gate from %s (threshold %.4f, k=%d)", self.name, folder, gate.threshold, gate.k)
        return gate

    def declared_outputs(self, spec) -> list:
        """The outputs the model's metadata declares (a tier may add its own: the edge's `answered_by`; a gated
        model's `leaf_score`)."""
        outputs = metadata_outputs(spec)
        return [*outputs, MetadataTensor(name=LEAF_SCORE, datatype="FP32", shape=[-1])] if self.gate else outputs

    def _new_batcher(self, classifier, extra: dict) -> MicroBatcher:
        return MicroBatcher(
            classifier.predict,
            max_images=int(extra.get("max_batch_images", 16)),
            max_wait_s=float(extra.get("max_batch_wait_ms", 5)) / 1000.0,
            # One batch in flight per interpreter a classifier pools (TFLite); TF parallelises inside one call.
            concurrency=int(extra.get("concurrent_batches", getattr(classifier, "pool_size", 1))),
            on_batch=_metrics()["batch_images"].labels(self.name, self.tier).observe,
        )

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with self._serving as serving:  # one version answers the whole request, whatever a store swap does meanwhile
            request_input = self.validate(payload, serving)
            # Photos are decoded and resized off the event loop (a large JPEG takes ms), within the pixel budget.
            x = await self.decode(request_input, serving)
            probabilities, distances = await self.classify(x, serving)
            return self.encode(probabilities, payload, serving, distances=distances)

    def validate(self, payload: InferenceRequest, serving: Serving):
        """-> the request's one image input, its envelope checked (BadRequest: 4xx with a message)."""
        requested_outputs(payload, self.output_names)  # an unknown output name fails before any image is decoded
        return check_request(payload, serving.classifier.spec, self.max_request_images)

    @property
    def output_names(self) -> list:
        return [output.name for output in self.outputs]

    async def decode(self, request_input, serving: Serving) -> np.ndarray:
        """-> float32 [N, H, W, 3] in the model's pixel range, values checked (decoding.py)."""
        return await self.decoder.decode(request_input, serving.classifier.spec)

    async def classify(self, x: np.ndarray, serving: Serving):
        """-> (probabilities, the leaf gate's distances or None): the model and the gate side by side."""
        if self.gate is None:
            return await self.batch(x, serving), None
        scale = serving.classifier.spec.input_scale
        return await asyncio.gather(self.batch(x, serving), asyncio.to_thread(self.gate.distances, x, scale))

    def unknown(self, probabilities: np.ndarray, distances, serving: Serving) -> np.ndarray:
        """bool [N]: the photos answered `unknown` (the policy's one rule)."""
        return self.policy.unknown(probabilities, serving.classifier.spec.class_names, distances)

    async def batch(self, x: np.ndarray, serving: Serving) -> np.ndarray:
        """Probabilities for `x`, computed in a micro-batch with other requests' images (the predict stage)."""
        return await serving.batcher.predict(x)

    def encode(self, probabilities: np.ndarray, payload: InferenceRequest, serving: Serving,
               more: Optional[dict] = None, distances=None) -> InferenceResponse:
        """`more`: outputs a tier adds ({name: ResponseOutput}), answered where the request's outputs put them;
        `distances`: the leaf gate's, when it ran (-> `unknown` answers and the `leaf_score` output)."""
        spec = serving.classifier.spec
        unknown = self.unknown(probabilities, distances, serving)
        more = dict(more or {})
        if distances is not None:
            more[LEAF_SCORE] = NumpyCodec.encode_output(LEAF_SCORE, self.gate.leaf_scores(distances))
            more[LEAF_SCORE].shape = [len(distances)]
        response = build_response(self.name, serving.version, probabilities, spec, payload.id,
                                  outputs=requested_outputs(payload, self.output_names), more=more, unknown=unknown)
        for class_id, rejected in zip(probabilities.argmax(axis=1), unknown):
            _metrics()["predictions"].labels(self.name, self.tier,
                                             UNKNOWN if rejected else spec.class_names[class_id]).inc()
        if unknown.any():
            _metrics()["unknown"].labels(self.name, self.tier).inc(int(unknown.sum()))
        return response

    async def metadata(self) -> MetadataModelResponse:
        """MLServer's metadata plus what a client needs beyond shapes: what the model is (so a remote client's plots
        say "stand-in model, synthetic data"), its classes and pixel range. Strings: gRPC parameters are scalars."""
        metadata = await super().metadata()
        spec = self.classifier.spec
        current = metadata.parameters.model_dump(exclude_none=True) if metadata.parameters else {}
        # a gated model answers `unknown` with a class id past its classes; class_names stays the model's own (what
        # the probabilities' columns are, and what an escalating edge compares with its cloud's)
        gate = {"unknown_class_id": str(unknown_class_id(spec.class_names)), "unknown_label": UNKNOWN,
                "leaf_gate_threshold": f"{self.gate.threshold:g}", "leaf_gate_k": str(self.gate.k)} if self.gate else {}
        metadata.parameters = Parameters(**current, description=spec.title, class_names=",".join(spec.class_names),
                                         **gate,
                                         input_scale=f"{spec.input_scale:g}", standin=str(spec.standin).lower(),
                                         tier=self.tier, max_image_pixels=str(self.decoder.limits.image),
                                         **self._store_parameters())
        version = self.serving_version
        if version and version not in (metadata.versions or []):
            metadata.versions = [*(metadata.versions or []), version]  # what answers carry as model_version
        return metadata

    async def unload(self) -> bool:
        if self._store:
            self._store.stop()
        if self._serving:
            self._serving.batcher.close()
        if getattr(self, "decoder", None):
            self.decoder.close()
        return True

    # ------------------------------------------------------------ a model store (store.py): verified hot swap
    # Why a swap inside this one model rather than MLServer's model versions: MLServer would load each version as a
    # model of its own, `/v2/models/cassava/infer` would reach whichever it made the default, and verification, the
    # spec check and draining the old version would all sit outside the server. Here one model answers throughout;
    # the swap is two assignments in the event loop between two requests.
    _store: StoreWatcher = None

    @property
    def serving_version(self):
        """The version answering new requests: the store's (a string, as V2 has it), or the settings' version."""
        return self._serving.version if self._serving else self.version

    async def _open_store(self, uri: str, extra: dict):
        """-> (the classifier of the store's highest verified version, its name); the watcher starts after load."""
        self._store = StoreWatcher(uri, lambda folder: self.load_classifier(str(folder), extra),
                                   interval=float(extra.get("store_interval_s", WATCH_INTERVAL_S)),
                                   allow_spec_change=bool(extra.get("allow_spec_change", False)),
                                   model_name=self.name, tier=self.tier)
        version, classifier = await asyncio.to_thread(self._store.first)
        self._store.served(version, classifier.spec)
        self._settings.versions = [str(version)]  # metadata's `versions`
        return classifier, str(version)

    async def _swap(self, version: int, classifier) -> None:
        """A verified version takes new requests; the old one's micro-batcher closes when its requests are answered
        (the old classifier is freed with the last reference to it)."""
        old = self._serving
        await self.swapped(classifier.spec)  # a tier's own state for the new spec, before any request sees it
        self._serving = Serving(classifier, self._new_batcher(classifier, self._extra()), str(version))
        self.inputs, self.outputs = metadata_inputs(classifier.spec), self.declared_outputs(classifier.spec)
        self._store.served(version, classifier.spec)
        self._settings.versions = [str(version)]
        log.info("model %s: store version %s serves now (was %s)", self.name, version, old.version)
        if not await old.drain():
            log.warning("model %s: version %s still had requests after 120 s; closing it", self.name, old.version)
        old.batcher.close()

    async def swapped(self, spec) -> None:
        """Called before a new store version takes requests (the edge re-reads its escalation threshold)."""

    def _store_parameters(self) -> dict:
        if not self._store:
            return {}
        return {"store": str(self._store.store), "serving_version": str(self._store.serving),
                "store_interval_s": f"{self._store.interval:g}"}


def report_load_failure(exc: Exception) -> None:
    """Tell the launcher why the model did not load (one line), when it asked through LOAD_FAILURE_ENV."""
    path = os.environ.get(LOAD_FAILURE_ENV)
    if not path:
        return
    text = str(exc).splitlines()[0][:500] if str(exc) else ""
    message = text if isinstance(exc, CassavaError) else f"{type(exc).__name__}: {text}"
    try:
        with open(path, "w") as handle:
            handle.write(message + "\n")
    except OSError:
        pass  # the launcher then says MLServer stopped; MLServer's own log has the error


__all__ = ["ImageClassifierRuntime", "BadRequest"]
