"""deploy/monitoring: the alert rules pass promtool (check and their unit tests), the PrometheusRule carries the same
groups, every metric they and the dashboard read is one the servers export, and a real Prometheus scraping a real
cloud and two real edges on loopback fires the drift alarm for the edge with a bad copy, and nothing for the healthy
one."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import REPO, LoopbackServer, all_running, free_port, photos_tensor, stop_process_group, wait_ready

MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "cassava-alerts.rules.yml"
OPERATOR = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (apt-get install prometheus; `make test` does it as root)")
    return path


def _promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rules_file_and_the_operator_s_copy(tmp_path):
    checked = _promtool("check", "rules", RULES)
    assert checked.returncode == 0 and "SUCCESS: 10 rules found" in checked.stdout, checked.stdout + checked.stderr
    operator = yaml.safe_load(OPERATOR.read_text())
    assert (operator["apiVersion"], operator["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert operator["spec"] == yaml.safe_load(RULES.read_text())  # the same groups, word for word
    extracted = tmp_path / "operator-rules.yml"
    extracted.write_text(yaml.safe_dump(operator["spec"]))
    assert _promtool("check", "rules", extracted).returncode == 0
    broken = tmp_path / "broken.yml"  # and promtool does refuse a bad expression (the check can fail)
    broken.write_text(RULES.read_text().replace("cassava:audited_agreement:ratio6h < 0.90", "ratio6h <<< 0.90"))
    assert _promtool("check", "rules", broken).returncode != 0


def test_promtool_unit_tests_of_every_alert():
    tested = _promtool("test", "rules", "cassava-alerts.test.yml", cwd=MONITORING / "tests")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = (MONITORING / "tests" / "cassava-alerts.test.yml").read_text()
    assert all(f"alertname: {a}" in tests for a in alerts), "an alert without a promtool unit test"


def _exported_metric_names() -> set:
    """Every metric the servers create (prometheus_client constructors in edge/ and shared/server/, and trust.py's
    `gauge(...)` shorthand), with the suffixes exposition adds."""
    names = set()
    for source in [*REPO.glob("edge/*.py"), *REPO.glob("shared/server/*.py")]:
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram|gauge)\(\s*"(cassava_\w+)"', source.read_text()):
            names |= {f"{name}_total"} if kind == "Counter" else {name}
            if kind == "Histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_rules_and_dashboard_read_only_metrics_the_servers_export():
    exported = _exported_metric_names()
    assert {"cassava_audited_images_total", "cassava_answered_images_total", "cassava_model_version",
            "cassava_audited_agreement_bound"} <= exported
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = RULES.read_text()
    used = set(re.findall(r"\b(cassava_[a-z_]+)", rules + "\n".join(expressions)))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    recorded = set(re.findall(r"record: (\S+)", rules))
    assert set(re.findall(r"\b(cassava:[a-z0-9_:]+)", "\n".join(expressions))) <= recorded


# ---------------------------------------------------------------------------------------------- live

RUN_FOR_S = 5  # the live run shortens every `for:` to this; the expressions are the shipped ones


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, standin_int8):
    """A real cloud (TF stand-in) and two edges escalating to it with every confident photo audited: `healthy` on
    the int8 copy, `bad` on a deliberately bad copy of it (its spec says raw 0-255 pixels, so every input clips to
    white: one class, confidence 1, whatever the photo)."""
    root = tmp_path_factory.mktemp("fleet")
    bad = shutil.copytree(standin_int8, root / "bad-copy")
    spec = json.loads((bad / "cassava-model.json").read_text())
    (bad / "cassava-model.json").write_text(json.dumps({**spec, "input_scale": 255.0}))
    cloud = LoopbackServer.serve(root, "cloud", "standin")
    edges = {name: LoopbackServer.serve(root / name, "edge", model, "--escalate-to", cloud.url, "--audit-rate", 1)
             for name, model in (("healthy", standin_int8), ("bad", bad))}
    cloud.start(timeout=300)  # first: the edges check the cloud's classes when they start
    try:
        for servers in all_running(edges, timeout=300):
            yield {"cloud": cloud, **servers}
    finally:
        cloud.stop()


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping and evaluating every second."""

    def __init__(self, workdir: Path, targets: dict, rules: Path):
        self.port, self.workdir = free_port(), workdir
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(rules)],
                  "scrape_configs": [{"job_name": "cassava", "static_configs": [
                      {"targets": [f"127.0.0.1:{port}"], "labels": {"instance": name}}
                      for name, port in targets.items()]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(f"{self.url}/-/ready", 60, self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def firing(self) -> set:
        alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("instance")) for a in alerts if a["state"] == "firing"}

    def stop(self):
        stop_process_group(self.process)
        self.log.close()


def test_a_real_prometheus_fires_for_the_bad_edge_and_stays_quiet_for_the_healthy_one(fleet, tmp_path):
    from cassava.shared.data import load_samples

    rules = tmp_path / "rules.yml"  # the shipped rules, `for:` shortened so that the run takes a minute, not hours
    rules.write_text(re.sub(r"for: \d+[mh]", f"for: {RUN_FOR_S}s", RULES.read_text()))
    prometheus = Prometheus(tmp_path, {name: server.metrics_port for name, server in fleet.items()}, rules)
    try:
        photos = [Path(s.source).read_bytes() for s in load_samples("standin")]  # 180 distinct photos
        started, fired = time.monotonic(), {}
        wanted = {("CassavaAuditedAgreementLow", "bad"), ("CassavaEdgeBelowItsPromise", "bad")}
        for i in range(0, len(photos), 6):  # one pass, 6 photos a request, to each edge
            for name in ("healthy", "bad"):
                reply = httpx.post(f"{fleet[name].url}/v2/models/cassava/infer", timeout=60,
                                   json={"inputs": [photos_tensor(photos[i:i + 6])]})
                assert reply.status_code == 200, reply.text
            time.sleep(0.3)  # audits run in the background, one at a time
            for alert in prometheus.firing() - set(fired):
                fired[alert] = time.monotonic() - started
        deadline = time.monotonic() + 60
        while not wanted <= set(fired) and time.monotonic() < deadline:
            for alert in prometheus.firing() - set(fired):
                fired[alert] = time.monotonic() - started
            time.sleep(0.5)
        assert wanted <= set(fired), f"fired: {fired}"
        time.sleep(3)  # a few more evaluations on the healthy edge's final counts
        # the healthy edge: no alert, not even pending, at any evaluation of the run
        assert prometheus.query('max_over_time(ALERTS{instance="healthy"}[1h])') == []
        assert prometheus.query('max_over_time(ALERTS{alertname="CassavaModelVersionMismatch"}[1h])') == []
        audits = {r["metric"]["instance"]: float(r["value"][1])
                  for r in prometheus.query("cassava:audited_images:increase6h")}
        assert audits["healthy"] >= 30 and audits["bad"] >= 30  # both had enough audits to be judged
        ratio = {r["metric"]["instance"]: float(r["value"][1])
                 for r in prometheus.query("cassava:audited_agreement:ratio6h")}
        assert ratio["healthy"] >= 0.97 and ratio["bad"] < 0.5
        # the bad edge protects itself (edge/trust.py): said once in its log, and in metrics
        assert float(prometheus.query('max(cassava_trust_protecting{instance="bad"})')[0]["value"][1]) == 1
        raised = float(prometheus.query('max(cassava_escalate_below{instance="bad"})')[0]["value"][1])
        stored = float(prometheus.query('max(cassava_escalate_below{instance="healthy"})')[0]["value"][1])
        assert raised > stored  # both copies store the same threshold
        assert fleet["bad"].log_path.read_text().count("escalating more") == 1
        assert "escalating more" not in fleet["healthy"].log_path.read_text()
        # every dashboard query is valid PromQL here (a Grafana variable set to match every node)
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel["targets"]:
                prometheus.query(target["expr"].replace("$instance", ".*"))
        print(f"\nlive drift alarm: first firing after {fired} s (scrape and evaluation every 1 s, for: {RUN_FOR_S}s)")
    finally:
        prometheus.stop()
