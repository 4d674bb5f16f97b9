"""The OIP REST specification's own fuzzer: schemathesis runs ../shared's open_inference_rest.yaml against both tiers
as `cassava serve` runs them (fixtures of test_oip.py) and checks every answer: no 5xx, a documented status code,
the documented content type and body schema, and OIP's error object on every 4xx. Each server then still answers a
photo. A fixed example budget by default (a few minutes on a loaded 2-core machine); `pytest -m fuzz_full
tests/test_oip_fuzz.py` runs the large one.

The spec is adapted in a copy written at run time, because as published it cannot be run as is:
  - its paths are templated `${MODEL_NAME}` (not OpenAPI's `{MODEL_NAME}`), and `/v2/` has a trailing slash that
    no V2 server routes: both rewritten;
  - only the `/versions/{v}` paths are listed: each also gets its version-less twin, which clients use most;
  - model names are drawn from the served `cassava` and an unknown `nosuch` (negative cases fuzz others), versions
    from the served one and `0`;
  - 4xx answers other than 400 are undocumented, and its health answers have no bodies: every operation documents
    400/404/405/413 as `{"error": string}` (required), the health answers as OIP's prose gives them
    (`{"live"}`, `{"ready"}` -- the prose says `live` for server ready, a typo KServe's servers and clients read as
    `ready` --, model ready `{"name", "ready"}`), and infer's 200 may be the binary data extension.
"""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from helpers import BIN, SHARED, infer_json, photos_tensor, require_shared, served_version

pytestmark = [pytest.mark.slow]
SPEC = SHARED / "protocol" / "open-inference" / "open_inference_rest.yaml"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLES, FULL_EXAMPLES = 40, 1000  # per operation; 9 operations


def _ok(properties: dict) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def adapted_spec(versions) -> dict:
    """The published OIP REST spec, made runnable and strict as the module docstring says."""
    spec = yaml.safe_load(SPEC.read_text())
    spec["components"]["schemas"]["oip_error"] = {
        "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    error = {"description": "OIP error object",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/oip_error"}}}}
    paths = {}
    for path, item in spec["paths"].items():
        path = path.replace("${", "{").rstrip("/")
        paths[path] = item
        if "/versions/{MODEL_VERSION}" in path:
            bare = copy.deepcopy(item)
            bare["parameters"] = [p for p in bare["parameters"] if p["name"] != "MODEL_VERSION"]
            for operation in _operations(bare):
                operation["operationId"] += "-versionless"
            paths[path.replace("/versions/{MODEL_VERSION}", "")] = bare
    for path, item in paths.items():
        for parameter in item.get("parameters", []):
            names = ["cassava", "nosuch"] if parameter["name"] == "MODEL_NAME" else [*versions, "0"]
            parameter["schema"] = {"type": "string", "enum": names}
        for operation in _operations(item):
            responses = operation["responses"]
            responses.update({code: error for code in ("400", "404", "405", "413")})
            if path.endswith("/health/live"):
                responses["200"] = _ok({"live": {"type": "boolean"}})
            elif path.endswith("/health/ready"):
                responses["200"] = _ok({"ready": {"type": "boolean"}})
            elif path.endswith("/ready"):
                responses["200"] = _ok({"name": {"type": "string"}, "ready": {"type": "boolean"}})
            elif path.endswith("/infer"):
                binary = {"schema": {"type": "string", "format": "binary"}}
                responses["200"]["content"]["application/octet-stream"] = binary
    spec["paths"] = paths
    return spec


def _operations(item: dict):
    return [operation for method, operation in item.items() if method != "parameters"]


def _fuzz(server, tmp_path, examples: int, timeout: float):
    require_shared(SPEC)
    versions = [served_version(server)] if server.tier == "cloud" else []
    spec = tmp_path / f"oip-{server.tier}.json"
    spec.write_text(json.dumps(adapted_spec(versions)))
    command = [BIN / "st", "run", spec, "--url", server.url, "--max-examples", examples, "--seed", "22",
               "--workers", "1", "--generation-database", "none", "--phases", "examples,coverage,fuzzing",
               "--checks", CHECKS, "--request-timeout", "60", "--no-color"]
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                            cwd=tmp_path)
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "errored" not in summary, summary
    return summary


def _answers_a_photo(server, photo_files):
    reply = infer_json(server, {"inputs": [photos_tensor(photo_files[:1])]})
    assert reply.status_code == 200 and reply.json()["outputs"][2]["data"], reply.text[:300]
    assert server.alive()


def test_the_adapted_spec_keeps_every_published_operation():
    require_shared(SPEC)
    published = yaml.safe_load(SPEC.read_text())["paths"]
    adapted = adapted_spec(["v1"])["paths"]
    assert len(adapted) == len(published) + 3  # the three /versions/ paths' version-less twins
    for item in adapted.values():
        for operation in _operations(item):
            assert operation["responses"]["404"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/oip_error"}


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_schemathesis_finds_no_nonconformance(standin_servers, photo_files, tmp_path, tier):
    server = standin_servers[tier]
    _fuzz(server, tmp_path, EXAMPLES, timeout=600)
    _answers_a_photo(server, photo_files)


@pytest.mark.fuzz_full
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_schemathesis_full_budget(standin_servers, photo_files, tmp_path, tier):
    """Runs when asked for (`pytest -m fuzz_full tests/test_oip_fuzz.py`); deselected otherwise (conftest.py)."""
    server = standin_servers[tier]
    _fuzz(server, tmp_path, FULL_EXAMPLES, timeout=3600)
    _answers_a_photo(server, photo_files)
