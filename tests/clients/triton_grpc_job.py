"""tritonclient.grpc, sync and aio, with their defaults and with an output subset (in a child process: its generated
`inference` protobuf package and MLServer's cannot share one process). stdin: {"grpc", "photos", "batch"}."""
import asyncio
import json
import sys

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio


def inputs(files):
    tensor = triton_grpc.InferInput("photos", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return [tensor]


def answer(results, health):
    names = sorted({o.name for r in results for o in r.get_response().outputs})
    labels = [x.decode() for r in results if "labels" in names for x in r.as_numpy("labels").reshape(-1)]
    return {"outputs": names, "labels": labels, "health": health}


def sync(chunks):
    client = triton_grpc.InferenceServerClient(job["grpc"])
    health = [client.is_server_live(), client.is_server_ready(), client.is_model_ready("cassava")]
    answers = {}
    for outputs in ([], ["labels"]):
        asked = [triton_grpc.InferRequestedOutput(name) for name in outputs] or None
        answers[f"grpc {outputs}"] = answer([client.infer("cassava", inputs(c), outputs=asked) for c in chunks], health)
    client.close()
    return answers


async def aio(chunks):
    client = triton_grpc_aio.InferenceServerClient(job["grpc"])
    health = [await client.is_server_live(), await client.is_server_ready(), await client.is_model_ready("cassava")]
    answers = {}
    for outputs in ([], ["labels"]):
        asked = [triton_grpc.InferRequestedOutput(name) for name in outputs] or None
        results = [await client.infer("cassava", inputs(c), outputs=asked) for c in chunks]
        answers[f"grpc.aio {outputs}"] = answer(results, health)
    await client.close()
    return answers


job = json.load(sys.stdin)
files = [open(path, "rb").read() for path in job["photos"]]
chunks = [files[i:i + job["batch"]] for i in range(0, len(files), job["batch"])]
print(json.dumps({**sync(chunks), **asyncio.run(aio(chunks))}))
