"""The server side of both tiers, inside MLServer.

  runtime.py     ImageClassifierRuntime: validate -> decode -> batch -> predict -> encode (a tier subclasses it)
  batching.py    micro-batching after each request was validated on its own
  rest.py        the ASGI layer in front of MLServer's REST app (body limit, binary extension, OIP error objects and
                 health bodies), checked at start-up
  conformance.py MLServer patches: bounded metric labels, gRPC health and reflection, quiet gRPC client mistakes
  repository.py  the model repository settings.json names: this project's runtimes only
  serve.py       `cassava serve cloud|edge`: check the model, write the run dir, run `mlserver start`
  process.py     start / wait for / stop a server process (serve, demo; cassava.testing builds on it)
"""
