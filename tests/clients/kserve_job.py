"""KServe's Python clients with their defaults (run in a child process: KServe's generated `inference` protobuf
package and MLServer's cannot share one process). stdin: {"url", "grpc", "photos", "batch"}; stdout: JSON answers."""
import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def request(files, outputs):
    tensor = InferInput("photos", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return InferRequest("cassava", [tensor], request_outputs=[RequestedOutput(name) for name in outputs] or None)


def labels_of(response):
    names = [o.name for o in response.outputs]
    labels = response.get_output_by_name("labels").as_numpy().tolist() if "labels" in names else []
    return names, [x.decode() if isinstance(x, bytes) else x for x in labels]


async def run(job):
    files = [open(path, "rb").read() for path in job["photos"]]
    chunks = [files[i:i + job["batch"]] for i in range(0, len(files), job["batch"])]
    answers = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    health = [await rest.is_server_live(job["url"]), await rest.is_server_ready(job["url"]),
              await rest.is_model_ready(job["url"], "cassava")]
    for outputs in ([], ["labels"]):
        got = [labels_of(await rest.infer(job["url"], request(c, outputs), model_name="cassava")) for c in chunks]
        answers[f"rest {outputs}"] = {"outputs": sorted({n for g in got for n in g[0]}),
                                      "labels": [label for g in got for label in g[1]], "health": health}
    grpc_client = InferenceGRPCClient(job["grpc"], timeout=120)
    health = [await grpc_client.is_server_live(), await grpc_client.is_server_ready(),
              await grpc_client.is_model_ready("cassava")]
    for outputs in ([], ["labels"]):
        got = [labels_of(await grpc_client.infer(request(c, outputs))) for c in chunks]
        answers[f"grpc {outputs}"] = {"outputs": sorted({n for g in got for n in g[0]}),
                                      "labels": [label for g in got for label in g[1]], "health": health}
    await grpc_client.close()
    return answers


print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
