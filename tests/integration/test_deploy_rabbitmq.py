"""deploy/k8s/components/rabbitmq-quorum: the fleet on a RabbitMQ cluster with quorum queues. The
example overlay renders (``kubectl kustomize``); every pod composes one broker URL naming every
node, that the settings accept as a quorum fleet; KEDA scales on every quorum queue with the pods'
user and password; the NetworkPolicies open the RabbitMQ nodes and no longer the broker Redis."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pika

from tests.integration.test_deploy import BASE, CONSOLE_SECRET, K8S, _expand, config, pod_specs, rendered
from workers.backends.base import FLEET_QUEUES
from workers.backends.rabbitmq.urls import node_urls
from workers.config import settings_from_env
from workers.settings import Settings

OVERLAY = K8S / "overlays" / "rabbitmq-quorum"
SECRET = {
    "CATFLEET_DATABASE_URL": "postgresql://catfleet:dbpw@db:5432/catfleet",
    "CATFLEET_CACHE_URL": "redis://:cachepw@cache:6379/0",
    "BROKER_AMQP_PASSWORD": "s3cretpw",
}


def test_the_overlay_renders_the_base_with_its_own_trigger_authentication() -> None:
    base, quorum = set(rendered(BASE)), set(rendered(OVERLAY))
    assert quorum == base - {"TriggerAuthentication/catfleet-broker-redis"} | {
        "TriggerAuthentication/catfleet-broker-rabbitmq"
    }
    data = config(rendered(OVERLAY))
    assert data["CATFLEET_RABBITMQ_QUEUE_TYPE"] == "quorum"
    assert not [k for k in data if k.startswith("BROKER_REDIS_")]  # nothing left of the Redis broker


def test_every_pod_composes_one_url_naming_every_node() -> None:
    objs = rendered(OVERLAY)
    data = config(objs)
    env = {**data, **SECRET}  # envFrom: the ConfigMap, then the Secret
    urls = set()
    for name, pod in pod_specs(objs).items():
        spec = pod["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            environ = dict(env)
            if name == "Deployment/catfleet-console" and container in spec["containers"]:
                environ |= {"CATFLEET_CONSOLE_USERS": "ann:pw:admin", "CATFLEET_CONSOLE_SECRET": "k"}
                assert {"secretRef": {"name": CONSOLE_SECRET}} in container["envFrom"]
            for var in container.get("env", []):
                assert set(re.findall(r"\$\((\w+)\)", var["value"])) <= env.keys(), var
                environ[var["name"]] = _expand(var["value"], env)
            settings = settings_from_env(environ)  # the process would start
            assert settings.rabbitmq_queue_type == "quorum"
            if container in spec["containers"]:  # the migrations do not use the broker
                urls.add(environ["CATFLEET_BROKER_URL"])
    [url] = urls  # every pod composes the same URL
    assert url.count("s3cretpw") == 1 and Settings(broker_url=url).broker_url == url
    nodes = node_urls(url)
    assert [urlsplit(u).netloc.split("@")[1] for u in nodes] == data["BROKER_AMQP_HOSTS"].split(",")
    assert len(nodes) == 3  # a quorum of a 3-node cluster survives one node lost
    for node in nodes:
        params = pika.URLParameters(node)
        assert (params.virtual_host, params.credentials.username) == (data["BROKER_AMQP_VHOST"], "catfleet")
        assert params.credentials.password == "s3cretpw" and params.heartbeat == 30


def test_keda_scales_on_every_quorum_queue_with_the_pods_credentials() -> None:
    objs = rendered(OVERLAY)
    data = config(objs)
    scaled = objs["ScaledObject/catfleet-worker"]
    triggers = scaled["spec"]["triggers"]
    expected = {q for queue in FLEET_QUEUES for q in (queue, f"{queue}.DQ")}
    assert {t["metadata"]["queueName"] for t in triggers} == expected and len(triggers) == len(expected)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["protocol"] == "amqp" and meta["mode"] == "QueueLength"
        assert meta["vhostName"] == data["BROKER_AMQP_VHOST"] and int(meta["value"]) > 0
        assert trigger["authenticationRef"]["name"] == "catfleet-broker-rabbitmq"
    auth = objs["TriggerAuthentication/catfleet-broker-rabbitmq"]["spec"]
    assert [(r["parameter"], r["name"], r["key"]) for r in auth["secretTargetRef"]] == [
        ("password", "catfleet-secrets", "BROKER_AMQP_PASSWORD")
    ]
    from_env = {e["parameter"]: (e["name"], e["containerName"]) for e in auth["env"]}
    assert from_env == {
        "host": ("BROKER_AMQP_KEDA_HOST", "worker"),
        "username": ("BROKER_AMQP_USER", "worker"),
    }
    keda_host = pika.URLParameters(data["BROKER_AMQP_KEDA_HOST"])
    assert keda_host.virtual_host == data["BROKER_AMQP_VHOST"]
    assert "@" not in data["BROKER_AMQP_KEDA_HOST"]  # no credentials in the ConfigMap
    worker = pod_specs(objs)["Deployment/catfleet-worker"]["spec"]
    assert "worker" in {c["name"] for c in worker["containers"]}


def test_network_policies_open_the_rabbitmq_nodes_instead_of_the_broker_redis() -> None:
    objs = rendered(OVERLAY)
    for name in ("catfleet-worker", "catfleet-relay", "catfleet-console"):
        egress = objs[f"NetworkPolicy/{name}"]["spec"]["egress"]
        peers = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: {p["port"] for p in rule["ports"]}
            for rule in egress
            for peer in rule["to"]
            if "podSelector" in peer and "namespaceSelector" not in peer
        }
        assert peers.get("catfleet-rabbitmq") == {5672, 5671}, name
        assert "catfleet-broker-redis" not in peers, name
