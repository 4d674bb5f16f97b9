"""The server side of both tiers, inside MLServer.

  runtime.py     ImageClassifierRuntime: validate -> decode -> batch -> predict -> encode (a tier subclasses it)
  batching.py    micro-batching after each request was validated on its own
  compat.py      everything MLServer 1.7.1 lacks, applied at server start: REST layers, gRPC interceptors, health,
                 reflection, error codes, bounded metric labels; checked when a model loads
  rest.py        the ASGI layer in front of MLServer's REST app (body limit, binary extension, OIP error objects and
                 health bodies)
  guard.py       model control closed by default, a fair share per client (REST middleware, gRPC interceptor)
  connections.py slow and idle clients cut, connections capped (REST protocol, gRPC options)
  health.py      grpc.health.v1.Health (Check and Watch) from MLServer's data plane
  repository.py  the model repository settings.json names: this project's runtimes only; applies compat.py
  serve.py       `cassava serve cloud|edge`: check the model, write the run dir, run `mlserver start`
  process.py     start / wait for / stop a server process (serve, demo; cassava.testing builds on it)
"""
