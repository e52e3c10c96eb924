"""deploy/: the manifests render (``kubectl kustomize``), the systemd units pass ``systemd-analyze
verify``, the alert rules pass promtool (syntax and unit tests), and all of them agree with each
other, with the Procfile and with the code; the dashboard and the alerts use only metrics that
exist. The tools come from scripts/ensure-services: a missing one fails the test, never skips it."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from dramatiq.common import dq_name

from schemas import CATEGORIZE_ACTOR
from tests.support.readme import DEPLOY, alert_names, procfile, systemd_units
from workers.backends.base import FLEET_QUEUES
from workers.backends.redis_urls import parse_sentinel_url
from workers.config import settings_from_env
from workers.harness.processes import ROOT
from workers.settings import Settings

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
SENTINEL_OVERLAY = K8S / "overlays" / "sentinel"
#: Every metric name the README's metrics tables document (a name with its labels: ``name{label}``).
README_METRICS = set(
    re.findall(r"^\| `([a-z_]+)(?:\{[a-z_, ]*\})?` \|", (ROOT / "README.md").read_text(), re.MULTILINE)
)
#: The keys of the Secret `catfleet-secrets` the overlays provide (base/kustomization.yaml).
SECRET_KEYS = {"CATFLEET_DATABASE_URL", "CATFLEET_CACHE_URL", "BROKER_REDIS_PASSWORD"}
#: Only the console's pod gets the console's users and session key.
CONSOLE_SECRET = "catfleet-console-secrets"
console_secret = {"CATFLEET_CONSOLE_USERS": "ann:pw:admin,vic:pw2:viewer", "CATFLEET_CONSOLE_SECRET": "k"}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Where the units expect the installed package (`ExecStart=`).
UNIT_CATFLEET = "/opt/catfleet/.venv/bin/catfleet"


def tool(name: str) -> str:
    """The path of a checking tool; scripts/ensure-services installs them (kubectl into .venv
    when the machine has none)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/ensure-services (as root in CI)")
    return found


@functools.cache
def rendered(directory: Path) -> dict[str, dict[str, Any]]:
    """``kubectl kustomize DIR`` as {"Kind/name": object}."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(out)}


def pod_specs(objs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: v["spec"]["template"] for k, v in objs.items() if k.startswith("Deployment/")}


def config(objs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(objs["ConfigMap/catfleet-config"]["data"])


def test_kustomize_renders_every_resource_of_base_and_the_example_overlay() -> None:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk  # no manifest left out of the build
    parsed = {
        f"{d['kind']}/{d['metadata']['name']}"
        for r in listed
        for d in yaml.safe_load_all((BASE / r).read_text())
    }
    base, overlay = rendered(BASE), rendered(OVERLAY)
    assert set(base) == parsed
    assert set(overlay) == parsed
    assert {
        "Deployment/catfleet-worker",
        "Deployment/catfleet-relay",
        "NetworkPolicy/catfleet-worker",
        "NetworkPolicy/catfleet-relay",
        "ScaledObject/catfleet-worker",
        "TriggerAuthentication/catfleet-broker-redis",
    } <= parsed
    assert {o["metadata"].get("namespace") for o in overlay.values()} == {"catfleet"}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of an ``env`` value."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], value)


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_pod_gets_valid_env_names_and_one_broker_url(directory: Path) -> None:
    objs = rendered(directory)
    data = config(objs)
    fields = {f.upper() for f in Settings.__struct_fields__}
    for key in [*data, *SECRET_KEYS]:
        assert ENV_NAME.match(key), key
        if key.startswith("CATFLEET_"):  # any other CATFLEET_* variable stops the process
            assert key.removeprefix("CATFLEET_") in fields, key
    secret = {
        "CATFLEET_DATABASE_URL": "postgresql://catfleet:dbpw@db:5432/catfleet",
        "CATFLEET_CACHE_URL": "redis://:cachepw@cache:6379/0",
        "BROKER_REDIS_PASSWORD": "s3cretpw",
    }
    assert set(secret) == SECRET_KEYS
    env = {**data, **secret}  # envFrom: the ConfigMap, then the Secret
    urls = set()
    for name, pod in pod_specs(objs).items():
        spec = pod["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            refs = [(next(iter(r)), next(iter(r.values()))["name"]) for r in container["envFrom"]]
            console = name == "Deployment/catfleet-console" and container in spec["containers"]
            own = [("secretRef", CONSOLE_SECRET)] if console else []
            assert refs == [("configMapRef", "catfleet-config"), ("secretRef", "catfleet-secrets"), *own], (
                name
            )
            environ = dict(env) | (console_secret if own else {})
            for var in container.get("env", []):
                assert ENV_NAME.match(var["name"])
                # every $(VAR) is defined by the ConfigMap or the Secret (or stays literal)
                assert set(re.findall(r"\$\((\w+)\)", var["value"])) <= env.keys(), var
                environ[var["name"]] = _expand(var["value"], env)
            settings_from_env(environ)  # the process would start: no unknown or bad CATFLEET_*
            if container in spec["containers"]:  # the migrations do not use the broker
                urls.add(environ["CATFLEET_BROKER_URL"])
    [url] = urls  # every pod composes the same URL
    assert url.count("s3cretpw") == 1
    assert Settings(broker_url=url).broker_url == url
    pool = redis.ConnectionPool.from_url(url)
    kw = pool.connection_kwargs
    assert f"{kw['host']}:{kw['port']}" == data["BROKER_REDIS_ADDRESS"]
    assert (kw["db"], kw["password"]) == (int(data["BROKER_REDIS_DB"]), "s3cretpw")
    tls = data["BROKER_REDIS_TLS"]
    assert tls in ("enable", "disable")
    assert (tls == "enable") == url.startswith("rediss://") == (pool.connection_class is redis.SSLConnection)
    if tls == "enable":  # the CA named in the URL is mounted where the broker is used
        ca = Path(kw["ssl_ca_certs"])
        for name in ("Deployment/catfleet-worker", "Deployment/catfleet-relay"):
            spec = pod_specs(objs)[name]["spec"]
            mounts = {m["mountPath"]: m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
            volume = mounts[str(ca.parent)]
            [source] = [v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == volume]
            assert source == "catfleet-broker-tls"


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_keda_scales_on_every_queue_and_its_retries_with_the_pods_connection(directory: Path) -> None:
    objs = rendered(directory)
    data = config(objs)
    scaled = objs["ScaledObject/catfleet-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "catfleet-worker"
    triggers = scaled["spec"]["triggers"]
    namespace = data["CATFLEET_BROKER_NAMESPACE"]
    expected = {f"{namespace}:{q}" for queue in FLEET_QUEUES for q in (queue, dq_name(queue))}
    assert {t["metadata"]["listName"] for t in triggers} == expected
    assert len(triggers) == len(expected)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert "enableTLS" not in meta  # TLS comes from the TriggerAuthentication (BROKER_REDIS_TLS)
        assert meta["addressFromEnv"] == "BROKER_REDIS_ADDRESS"
        assert meta["databaseIndex"] == data["BROKER_REDIS_DB"]
        assert int(meta["listLength"]) > 0
        assert f"TriggerAuthentication/{trigger['authenticationRef']['name']}" in objs
    auth = objs["TriggerAuthentication/catfleet-broker-redis"]["spec"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["secretTargetRef"]}
    assert refs["password"] == ("catfleet-secrets", "BROKER_REDIS_PASSWORD")
    assert {k for name, k in refs.values() if name == "catfleet-secrets"} <= SECRET_KEYS
    [tls] = auth["env"]
    assert (tls["parameter"], tls["name"]) == ("tls", "BROKER_REDIS_TLS")
    worker = pod_specs(objs)["Deployment/catfleet-worker"]["spec"]
    assert tls["containerName"] in {c["name"] for c in worker["containers"]}
    if data["BROKER_REDIS_TLS"] == "enable":
        assert refs["ca"] == ("catfleet-broker-tls", "ca.crt")


def test_manifests_agree_on_names_ports_probes_and_grace() -> None:
    objs = rendered(BASE)
    data = config(objs)
    pods = pod_specs(objs)
    deployment = objs["Deployment/catfleet-worker"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == int(data["CATFLEET_METRICS_PORT"])
    assert data["CATFLEET_METRICS_HOST"] == "0.0.0.0"  # probes come from the kubelet
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    # SIGTERM drains for the shutdown timeout; Kubernetes must wait longer before SIGKILL.
    shutdown_s = int(data["CATFLEET_WORKER_SHUTDOWN_TIMEOUT_MS"]) / 1000
    assert pod["spec"]["terminationGracePeriodSeconds"] >= shutdown_s + 10
    [relay] = pods["Deployment/catfleet-relay"]["spec"]["containers"]
    [relay_port] = relay["ports"]
    assert relay_port["containerPort"] == int(data["CATFLEET_RELAY_METRICS_PORT"])
    for name, spec in ((n, p["spec"]) for n, p in pods.items()):
        # migrations first, in every pod, with the same image and settings
        [migrate] = spec["initContainers"]
        [main] = spec["containers"]
        assert migrate["args"] == ["migrate"], name
        assert migrate["image"] == main["image"], name
        for c in (migrate, main):
            assert {"requests", "limits"} <= set(c["resources"]), (name, c["name"])
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert spec["securityContext"]["runAsNonRoot"] is True
    # what runs in Kubernetes is what the Procfile names
    commands = {" ".join(["catfleet", *c["args"]]) for p in pods.values() for c in p["spec"]["containers"]}
    commands |= {
        " ".join(["catfleet", *c["args"]]) for p in pods.values() for c in p["spec"]["initContainers"]
    }
    assert commands == {procfile()[t] for t in ("worker", "migrate", "relay", "console")}
    # one headless metrics Service per Deployment, on its container port
    for name, app in (
        ("catfleet-worker-metrics", "catfleet-worker"),
        ("catfleet-relay-metrics", "catfleet-relay"),
    ):
        service = objs[f"Service/{name}"]
        pod_labels = pods[f"Deployment/{app}"]["metadata"]["labels"]
        [c] = pods[f"Deployment/{app}"]["spec"]["containers"]
        [p] = c["ports"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["clusterIP"] == "None"
        assert [(s["port"], s["targetPort"]) for s in service["spec"]["ports"]] == [
            (p["containerPort"], p["name"])
        ]
        assert service["metadata"]["annotations"]["prometheus.io/port"] == str(p["containerPort"])
    pdb = objs["PodDisruptionBudget/catfleet-worker"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}
    return bool(selector["matchLabels"].items() <= labels.items())


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_network_policies_open_metrics_to_prometheus_only_and_egress_to_the_servers(directory: Path) -> None:
    objs = rendered(directory)
    data = config(objs)
    policies = [v for k, v in objs.items() if k.startswith("NetworkPolicy/")]
    broker_port = int(data["BROKER_REDIS_ADDRESS"].rsplit(":", 1)[1])
    needs = {
        "Deployment/catfleet-worker": {53, broker_port, 5432, 6379},
        "Deployment/catfleet-relay": {53, broker_port, 5432},
        "Deployment/catfleet-console": {53, broker_port, 5432},
    }
    for name, pod in pod_specs(objs).items():
        labels = pod["metadata"]["labels"]
        [policy] = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"], name  # both default-deny
        [main] = pod["spec"]["containers"]
        port_names = {p["name"] for p in main["ports"]}
        # the console's page port only from the ingress controller's namespace; metrics only from
        # Prometheus pods
        served = "http" if name == "Deployment/catfleet-console" else "metrics"
        for rule in policy["ingress"]:
            assert [p["port"] for p in rule["ports"]] == [served], name
            assert served in port_names
            for peer in rule["from"]:  # never the whole cluster
                assert peer["namespaceSelector"]["matchLabels"], name
                assert served == "http" or peer["podSelector"]["matchLabels"], name
                assert "ipBlock" not in peer
        egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
        for rule in policy["egress"]:
            assert rule["to"] and all(
                peer.get("podSelector", {}).get("matchLabels") for peer in rule["to"]
            ), name
        assert needs[name] <= egress_ports <= {53, 5432, 6379, 6380}, (name, egress_ports)


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units as shipped, with ExecStart= pointing at this checkout's catfleet instead of
    /opt/catfleet (verify checks that the executable exists)."""
    catfleet = Path(sys.executable).parent / "catfleet"
    assert catfleet.exists()
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        text = path.read_text()
        assert UNIT_CATFLEET in text, path.name
        (tmp_path / path.name).write_text(text.replace(UNIT_CATFLEET, str(catfleet)))
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", *units], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""  # warnings (unknown keys, bad values) fail too


def _command(exec_start: str) -> str:
    """``ExecStart=`` as a Procfile command: without the venv path and the env(1) wrapper."""
    return exec_start.removeprefix("/usr/bin/env ").replace(UNIT_CATFLEET, "catfleet")


def test_systemd_units_match_the_procfile_and_start_after_the_migrations() -> None:
    units = systemd_units()
    types = procfile()
    # one unit per Procfile type, running the same command
    assert set(units) == {f"catfleet-{t}.service" for t in types}
    for name, command in types.items():
        [exec_start] = units[f"catfleet-{name}.service"]["Service"]["ExecStart"]
        assert _command(exec_start) == command, name
    migrate = units["catfleet-migrate.service"]["Service"]
    assert (migrate["Type"], migrate["RemainAfterExit"]) == (["oneshot"], ["true"])
    for name in ("catfleet-worker.service", "catfleet-relay.service", "catfleet-console.service"):
        section = units[name]["Unit"]
        for key in ("Requires", "After"):  # not started unless the migrations succeeded
            assert "catfleet-migrate.service" in " ".join(section.get(key, [])).split(), (name, key)
        assert "catfleet-migrate.service" not in " ".join(section.get("Wants", []))
    for name, unit in units.items():
        service = unit["Service"]
        assert service["EnvironmentFile"] == ["/etc/catfleet/env"], name
        assert service.get("User") == ["catfleet"], name
        if name != "catfleet-migrate.service":
            assert service["Restart"] == ["always"], name
    worker = units["catfleet-worker.service"]["Service"]
    assert int(worker["TimeoutStopSec"][0]) >= Settings().worker_shutdown_timeout_ms / 1000 + 10
    assert worker["KillMode"] == ["mixed"]  # only the supervisor gets SIGTERM (a second one kills)
    # the exporter's port, fixed on the command line, is not the worker's
    exporter_port = re.search(r"CATFLEET_METRICS_PORT=(\d+)", types["exporter"])
    assert exporter_port and int(exporter_port.group(1)) != Settings().metrics_port
    assert types["worker"] == "catfleet worker"


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
    # the k8s pods run as the image's user
    uid = re.search(r"^USER (\d+)", final, re.MULTILINE)
    assert uid
    for pod in pod_specs(rendered(BASE)).values():
        assert pod["spec"]["securityContext"]["runAsUser"] == int(uid.group(1))


def test_alert_rules_pass_promtool() -> None:
    prom = DEPLOY / "prometheus"
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=prom, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=prom, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    tested = set(re.findall(r"alertname: (\w+)", (prom / "alerts_test.yml").read_text()))
    assert alert_names() == tested  # every alert has a unit test


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:catfleet|dramatiq)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def test_dashboard_and_alerts_use_documented_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "catfleet-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for r in _rules()]
    used = set().union(*map(_metric_names, exprs))
    assert used, "no metrics found"
    assert used <= README_METRICS, used - README_METRICS
    assert f'actor_name="{CATEGORIZE_ACTOR}"' in "".join(exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_relay_and_skipped_patterns_are_alerted_on_and_the_relay_has_a_panel() -> None:
    alerted = {m for r in _rules() for m in _metric_names(r["expr"])}
    assert {"catfleet_patterns_skipped_total", "catfleet_relay_lag_seconds"} <= alerted
    dashboard = json.loads((DEPLOY / "grafana" / "catfleet-dashboard.json").read_text())
    relay_panels = [
        p for p in dashboard["panels"] if any("catfleet_relay_" in t["expr"] for t in p["targets"])
    ]
    assert relay_panels
    shown = {m for p in relay_panels for t in p["targets"] for m in _metric_names(t["expr"])}
    assert {
        "catfleet_relay_lag_seconds",
        "catfleet_relay_requests_sent_total",
        "catfleet_relay_errors_total",
    } <= shown


def test_every_domain_metric_is_documented() -> None:
    from workers import metrics, relay

    defined = {
        m._name + ("_total" if m._type == "counter" else "")
        for m in metrics.REGISTRY._names_to_collectors.values()
    }
    defined |= {
        m._name + ("_total" if m._type == "counter" else "")
        for m in (
            relay.REQUESTS_SENT,
            relay.MESSAGES_SENT,
            relay.ERRORS,
            relay.LAG,
            relay.PENDING,
            relay.DELAY,
        )
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


def test_the_sentinel_overlay_points_the_pods_and_keda_at_the_sentinels() -> None:
    """components/broker-sentinel: every pod composes one ``redis+sentinel://`` URL whose Sentinels
    are KEDA's addresses and whose service is KEDA's master; the NetworkPolicies of every pod that
    uses the broker let it reach the Sentinels."""
    objs = rendered(SENTINEL_OVERLAY)
    data = config(objs)
    secret = {"BROKER_REDIS_PASSWORD": "s3cretpw"}
    env = {**data, **secret}
    urls = set()
    for pod in pod_specs(objs).values():
        for container in pod["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] == "CATFLEET_BROKER_URL":
                    urls.add(_expand(var["value"], env))
    [url] = urls
    target = parse_sentinel_url(Settings(broker_url=url).broker_url)
    addresses = [tuple(a.rsplit(":", 1)) for a in data["BROKER_REDIS_ADDRESS"].split(",")]
    assert [(h, int(p)) for h, p in addresses] == target.sentinels and len(target.sentinels) == 3
    assert (target.password, target.db) == ("s3cretpw", 0)
    triggers = objs["ScaledObject/catfleet-worker"]["spec"]["triggers"]
    assert len(triggers) == len(FLEET_QUEUES) * 2
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-sentinel" and "addressFromEnv" not in meta
        assert (meta["addressesFromEnv"], meta["sentinelMaster"]) == ("BROKER_REDIS_ADDRESS", target.service)
        assert meta["databaseIndex"] == str(target.db)
    for name in ("catfleet-worker", "catfleet-relay", "catfleet-console"):
        egress = objs[f"NetworkPolicy/{name}"]["spec"]["egress"]
        to_sentinels = [
            rule
            for rule in egress
            if rule["to"][0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            == "catfleet-broker-sentinel"
        ]
        assert [r["ports"] for r in to_sentinels] == [[{"port": 26379, "protocol": "TCP"}]], name
