"""Where a batch of preprocessed images is classified: in this process, or by a V2 server (one tier or failover).

Both backends have the same `classify(pixels, samples) -> Predictions`, so `cassava predict` and `cassava compare`
neither know nor care where the model runs. A server's answer is used as sent: its `class_ids` and `labels` are the
prediction (the runtime took the argmax), the probabilities are shown beside them.
"""
from __future__ import annotations

import itertools
import sys
import threading
import uuid
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from ..errors import CassavaError
from ..labels import CROPNET_CLASSES, TFDS_CLASSES
from ..protocol import DEFAULT_WIRE, WIRE_FORMATS
from ..spec import ModelSpec


class Predictions(NamedTuple):
    class_ids: np.ndarray  # int64 [N]: the predicted class of each image
    probabilities: np.ndarray  # float32 [N, C]
    class_names: tuple  # C names, in output order
    tiers: List[str]  # which tier answered each image
    answered_by: Optional[List[str]] = None  # an escalating edge's `answered_by` per image (edge, cloud, ...)
    settlement_ids: Optional[List[str]] = None  # ... and where to fetch the cloud's answer later ("" if none)


class InProcessBackend:
    """The model in this process: TF for SavedModels and TF Hub handles, the TFLite interpreter for .tflite."""

    tier = "in-process"
    threads = 1  # one model call at a time: the TFLite interpreter is not thread-safe

    def __init__(self, model: str, input_scale=None, classes=None):
        from ..classifier import load_classifier

        self.classifier = load_classifier(model, input_scale=input_scale, classes=classes)
        self.spec = self.classifier.spec
        self.title = self.spec.title

    def classify(self, pixels: np.ndarray, samples=None) -> Predictions:
        from ..classifier import predict_pixels

        probabilities = predict_pixels(self.classifier, pixels)
        return Predictions(probabilities.argmax(axis=1), probabilities, self.spec.class_names,
                           [self.tier] * len(pixels))

    def close(self):
        pass


class ServerBackend:
    """A V2 server (or edge-with-cloud-failover) behind the same `classify()` as InProcessBackend; also a
    Classifier over uint8 pixels (`predict`), which is how `cassava compare --via` measures running servers.

    The input size comes from the model's metadata; class names from `--classes`, the metadata's parameters if
    the runtime publishes them, else CropNet's order, corrected by every response's (class id, label) pairs
    (`strict_classes`: a disagreement is an error instead, as a comparison needs). Each request has its own id;
    a request retried on the other tier keeps it, so either tier's logs and this client see one answer per request.
    """

    threads = None  # any number of requests in flight
    raw_pixels = True  # `predict` takes uint8 pixels: the server applies its model's pixel range

    def __init__(self, route, wire: str = DEFAULT_WIRE, input_scale=None, classes=None, tier: Optional[str] = None,
                 strict_classes: bool = False):
        from ..protocol.transport import HttpTransport
        from .routing import Endpoint, SingleRoute

        if wire not in WIRE_FORMATS:
            raise CassavaError(f"--wire {wire}: choose from {', '.join(WIRE_FORMATS)}")
        if isinstance(route, str):  # a bare URL: one server over REST
            route = SingleRoute(Endpoint(tier or "cloud", HttpTransport(route)))
        self.route, self.wire = route, wire
        self.info = route.metadata()
        extra = self.info.parameters
        where = " or ".join(t.transport.address for t in route.tiers)
        names = initial_class_names(self.info.num_classes, classes, extra.get("class_names"), strict_classes, where)
        version = f" {self.info.versions[0]}" if self.info.versions else ""
        self.spec = ModelSpec(
            input_size=self.info.input_size,
            input_scale=input_scale or float(extra.get("input_scale", 1.0)),
            class_names=names,
            description=str(extra.get("description") or f"model '{self.info.name}'{version} at {where}"),
            standin=str(extra.get("standin", "")).lower() == "true",
        )
        self.title = self.spec.title
        self.tier = tier or route.tiers[0].name
        self._names_from_user = bool(classes)
        self._strict = strict_classes
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:12]

    def classify(self, pixels: np.ndarray, samples: Optional[Sequence] = None) -> Predictions:
        from ..protocol.images import original_file
        from ..protocol.transport import TransportError, Unavailable
        from ..protocol.v2 import build_request, decode_answered_by, decode_response, decode_settlement_ids

        request_id = f"{self._id_prefix}-{next(self._ids)}"
        photos = None
        if self.wire == "photo":
            photos = [original_file(s.source if s is not None else p)
                      for s, p in zip(samples or [None] * len(pixels), pixels)]
        request = build_request(self.wire, pixels=pixels, photos=photos, input_scale=self.spec.input_scale,
                                grpc=self.route.grpc, request_id=request_id)
        response, tier = self.route.infer(request)
        if response.id and response.id != request_id:
            raise Unavailable(f"got the answer to request {response.id}, expected {request_id}")
        try:
            class_ids, probabilities, labels = decode_response(response)
        except ValueError as exc:
            raise TransportError(f"unexpected answer from the {tier}: {exc}") from None
        if probabilities.shape != (len(pixels), self.spec.num_classes):
            raise TransportError(f"the {tier} answered {probabilities.shape[0]} x {probabilities.shape[1]} "
                                 f"probabilities for {len(pixels)} images x {self.spec.num_classes} classes")
        answered_by = decode_answered_by(response)
        if answered_by is not None and len(answered_by) != len(pixels):
            raise TransportError(f"the {tier} answered {len(answered_by)} answered_by for {len(pixels)} images")
        settlement_ids = decode_settlement_ids(response)
        if settlement_ids is not None and len(settlement_ids) != len(pixels):
            settlement_ids = None  # not one per image: not something this client can follow
        return Predictions(class_ids, probabilities, self._learn_names(class_ids, labels), [tier] * len(pixels),
                           answered_by, settlement_ids)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.classify(np.asarray(pixels, dtype=np.uint8)).probabilities

    def _learn_names(self, class_ids, labels) -> tuple:
        """The server's labels name the classes it predicts; they win over guesses (and over --classes, loudly)."""
        with self._lock:
            names = list(self.spec.class_names)
            for class_id, label in zip(class_ids, labels):
                if class_id >= len(names) or names[class_id] == label:
                    continue  # past the model's classes: the server's `unknown` (shared/policy.unknown_class_id)
                if self._strict:
                    raise CassavaError(f"{self.route.describe()}: class {int(class_id)} is {label!r} on the server but "
                                       f"{names[class_id]!r} here; pass --classes in the server's order")
                if self._names_from_user:
                    print(f"note: the server calls class {class_id} {label!r}, not {names[class_id]!r} "
                          "as --classes says; using the server's name", file=sys.stderr)
                names[class_id] = label
            self.spec.class_names = tuple(names)
            return self.spec.class_names

    def close(self):
        self.route.close()


def initial_class_names(count: int, classes, published, strict: bool = False, where: str = "the server") -> tuple:
    if classes:
        if len(classes) != count:
            raise CassavaError(f"--classes names {len(classes)} classes but the server's model has {count}")
        return tuple(classes)
    if published:
        names = tuple(str(published).split(",")) if not isinstance(published, (list, tuple)) else tuple(published)
        if len(names) == count:
            return names
    for known in (CROPNET_CLASSES, TFDS_CLASSES):
        if len(known) == count:
            return known
    if strict:
        raise CassavaError(f"{where}: the model has {count} classes; name them with --classes")
    return tuple(f"class_{i}" for i in range(count))
