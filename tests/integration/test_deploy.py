"""deploy/: the manifests parse and agree with each other and with the code; the alert rules pass
promtool (syntax and unit tests); the dashboard and the alerts use only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE
from workers.harness.processes import ROOT
from workers.settings import Settings

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
#: Every metric name the README's metrics table documents.
README_METRICS = set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))


def k8s_objects() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / resource).read_text()):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def test_kustomize_base_builds_when_a_kustomize_is_installed() -> None:
    tool = shutil.which("kustomize")
    cmd = [tool, "build", str(BASE)] if tool else ["kubectl", "kustomize", str(BASE)]
    if not tool and not shutil.which("kubectl"):
        # No kustomize in CI's Debian: the cross-checks below still parse every resource.
        assert set(k8s_objects()) >= {"Deployment/catfleet-worker"}
        return
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    built = {f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(out)}
    assert built == set(k8s_objects())


def test_manifests_agree_on_names_ports_probes_and_grace() -> None:
    objs = k8s_objects()
    config = objs["ConfigMap/catfleet-config"]["data"]
    deployment = objs["Deployment/catfleet-worker"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == int(config["CATFLEET_METRICS_PORT"])
    assert config["CATFLEET_METRICS_HOST"] == "0.0.0.0"  # probes come from the kubelet
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert {"requests", "limits"} <= set(container["resources"])
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert "catfleet-config" in refs
    # SIGTERM drains for the shutdown timeout; Kubernetes must wait longer before SIGKILL.
    shutdown_s = int(config["CATFLEET_WORKER_SHUTDOWN_TIMEOUT_MS"]) / 1000
    assert pod["spec"]["terminationGracePeriodSeconds"] >= shutdown_s + 10
    # Every CATFLEET_* key is a real setting.
    fields = {f.upper() for f in Settings.__struct_fields__}
    assert {k.removeprefix("CATFLEET_") for k in config} <= fields
    service = objs["Service/catfleet-worker-metrics"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (port["containerPort"], port["name"])
    ]
    pdb = objs["PodDisruptionBudget/catfleet-worker"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    scaled = objs["ScaledObject/catfleet-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == f"{config['CATFLEET_BROKER_NAMESPACE']}:{CATEGORIZE_QUEUE}"
    assert f"TriggerAuthentication/{trigger['authenticationRef']['name']}" in objs


def test_systemd_and_procfile_agree_with_the_settings() -> None:
    unit = (DEPLOY / "systemd" / "catfleet-worker.service").read_text()
    stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert stop_s >= Settings().worker_shutdown_timeout_ms / 1000 + 10
    assert "KillMode=mixed" in unit  # only Dramatiq's main process gets SIGTERM (a second one kills)
    types = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line)
    assert {"worker", "migrate"} <= set(types)
    assert types["worker"].strip() == "catfleet worker"


def test_dockerfile_is_multi_stage_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert re.search(r"^USER (?!0\b|root\b)\S+", final, re.MULTILINE)
    assert "COPY --from=build" in final
    assert not re.search(r"build-essential|gcc|apt-get install", final)
    for path in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / path).exists(), path
    assert re.search(r"^ENTRYPOINT \[\"catfleet\"\]", final, re.MULTILINE)


def test_alert_rules_pass_promtool() -> None:
    prom = DEPLOY / "prometheus"
    check = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"], cwd=prom, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"], cwd=prom, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    names = {
        rule["alert"]
        for group in yaml.safe_load((prom / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tested = set(re.findall(r"alertname: (\w+)", (prom / "alerts_test.yml").read_text()))
    assert names == tested


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:catfleet|dramatiq)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_and_alerts_use_documented_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "catfleet-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set().union(*map(_metric_names, exprs))
    assert used, "no metrics found"
    assert used <= README_METRICS, used - README_METRICS
    assert f'actor_name="{CATEGORIZE_ACTOR}"' in "".join(exprs)


def test_every_domain_metric_is_documented() -> None:
    from workers import metrics

    defined = {
        m._name + ("_total" if m._type == "counter" else "")
        for m in metrics.REGISTRY._names_to_collectors.values()
    }
    defined |= {
        "catfleet_queue_messages",
        "catfleet_queue_delayed_messages",
        "catfleet_queue_dead_letters",
        "catfleet_queue_oldest_message_age_seconds",
        "catfleet_dead_letter_replays_total",
        "catfleet_dead_letter_purges_total",
        "catfleet_broker_workers",
        "catfleet_broker_up",
    }
    assert defined <= README_METRICS, defined - README_METRICS
    assert Path(ROOT / "deploy" / "grafana" / "catfleet-dashboard.json").exists()
