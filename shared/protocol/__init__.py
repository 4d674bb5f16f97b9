"""The wire between a client and either tier: V2 (Open Inference) codecs and the transports that carry them.

  images.py     ImagePayloadCodec: encoded photos (JPEG/PNG/WebP) <-> a V2 BYTES input, both directions
  v2.py         requests from images, model input from requests, responses both ways (MLServer's types)
  binary.py     the binary data extension's framing (JSON header + raw tensors), for the server's REST layer and
                the client's REST transport
  transport.py  one request to one server and back: REST (httpx) or gRPC (MLServer's stubs)

This module itself imports nothing heavy: the CLI reads the wire-format names without loading MLServer.
"""

# Input names a request may carry (exactly one per request), and the outputs every answer has.
FLOAT_INPUT, PIXELS_INPUT, PHOTOS_INPUT = "payload", "pixels", "photos"
CLASS_IDS, PROBABILITIES, LABELS = "class_ids", "probabilities", "labels"
# An escalating edge's extra output (docs/joint-inference.md): per image, who answered (edge, cloud, edge-provisional).
ANSWERED_BY = "answered_by"
# A gated model's extra output (docs/leaf-gate.md): per image, how leaf-like (1 near the cassava references, 0.5 at
# the gate's threshold, below that `unknown`).
LEAF_SCORE = "leaf_score"

# The client's wire formats: how a request carries the images (see v2.build_request).
WIRE_FORMATS = {
    "binary": "preprocessed pixels, no text encoding: over REST raw UINT8 `pixels` in the binary data extension; "
              "over gRPC (binary already) as compact",
    "compact": "preprocessed pixels as lossless WebP in `photos`",
    "uint8": "preprocessed pixels as UINT8 `pixels`",
    "photo": "the original files in `photos`",
    "float32": "the tutorial's FP32 `payload` in the model's pixel range",
}
# Measured in benchmarks/bench_client.py: over REST `binary` is 1.3-1.6x the images/s of `compact` for 1.25x its bytes
# (no WebP encode on the client, no WebP decode on the server). Over gRPC, MLServer turns a
# raw uint8 tensor into a Python list, and compact's WebP bytes measured 2-3x faster, so `binary` sends those there.
DEFAULT_WIRE = "binary"
