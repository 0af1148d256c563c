"""deploy/: the compose file and the Kubernetes manifests against their formats' schemas.

No network and no cluster: the compose-spec schema comes bundled with check-jsonschema
(its vendored copy, with its license), the Kubernetes schemas with kubernetes-validate,
and KEDA's two kinds are checked against tests/unit/schemas/keda.json (strict: unknown
fields fail). Besides the schemas: every pool of deploy/pools.yaml has its compose
service, scrape target, Deployment with probes on its metrics port, and ScaledObject on
each of its queues.
"""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shiftflow.consumers.pools import load_pools

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
POOLS = load_pools(str(DEPLOY / "pools.yaml"))
#: The oldest Kubernetes the manifests are written for (kubernetes-validate's schemas, strict).
K8S_VERSION = "1.29"
KEDA_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "keda.json").read_text())


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendored.joinpath("compose-spec.json").read_text(encoding="utf-8"))


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in _k8s_documents() if doc["kind"] == kind}


def _validate_keda(doc: dict[str, Any]) -> None:
    schema = {**KEDA_SCHEMA, "$ref": f"#/$defs/{doc['kind']}"}
    jsonschema.Draft202012Validator(schema).validate(doc)


# ------------------------------------------------------------------ compose


def test_compose_file_is_valid_against_the_compose_spec():
    jsonschema.Draft202012Validator(_compose_schema()).validate(_compose())


def test_the_compose_check_can_fail():
    broken = _compose()
    broken["services"]["ingress"]["restart"] = "sometimes"
    broken["services"]["ingress"]["stop_grace_period"] = ["11m"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_compose_schema()).validate(broken)


def test_compose_runs_the_stack():
    services = _compose()["services"]
    for name in ("rabbitmq", "postgres", "mongo", "redis", "prometheus", "grafana", "migrate", "ingress", "api",
                 "scheduler"):
        assert name in services, name
    assert "management" in services["rabbitmq"]["image"]
    assert services["scheduler"]["command"] == ["scheduler", "run"]
    assert services["ingress"]["command"] == services["api"]["command"] == ["ingress"]


def _pool_services() -> dict[str, dict[str, Any]]:
    found = {}
    for service in _compose()["services"].values():
        command = service.get("command") or []
        if command[:1] == ["workers"]:
            found[command[command.index("--pool") + 1]] = service
    return found


def test_compose_has_one_service_per_pool():
    services = _pool_services()
    assert set(services) == set(POOLS)
    for name, service in services.items():
        # Probed on the pool's own metrics port, which the pool binds from the pools file.
        assert f"127.0.0.1:{POOLS[name].metrics_port}/" in " ".join(service["healthcheck"]["test"]), name
        assert service["stop_grace_period"] == "11m", name


def test_compose_scrape_config_has_every_pool():
    config = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    compose = _compose()
    for target in targets:
        host = target.split(":")[0]
        assert host in compose["services"], target
    for name, pool in POOLS.items():
        assert f"workers-{name}:{pool.metrics_port}" in targets, name


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("name_and_doc", _k8s_documents(),
                         ids=lambda d: f"{d[0]}:{d[1]['kind']}/{d[1]['metadata']['name']}")
def test_manifest_is_valid_against_its_schema(name_and_doc):
    _, doc = name_and_doc
    if doc["apiVersion"].startswith("keda.sh/"):
        _validate_keda(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_manifest_checks_can_fail():
    deployment = json.loads(json.dumps(_by_kind("Deployment")["shiftflow-ingress"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = json.loads(json.dumps(next(iter(_by_kind("ScaledObject").values()))))
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = "5"
    with pytest.raises(jsonschema.ValidationError):
        _validate_keda(scaled)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_every_deployment_has_probes_on_what_its_process_serves_and_requests():
    # shiftflow ingress: /healthz and /readyz on the public port (8080); a pool: both on its
    # metrics_port; the scheduler: a metrics listener that answers every path (liveness).
    deployments = _by_kind("Deployment")
    assert {"shiftflow-ingress", "shiftflow-api", "shiftflow-scheduler"} <= set(deployments)
    for name, deployment in deployments.items():
        container = _container(deployment)
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        requests = container["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], name
        live = container["livenessProbe"]["httpGet"]
        assert live["path"] == "/healthz", name
        if container["args"][0] == "ingress":
            assert _port_number(container, live["port"]) == 8080
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        elif container["args"][0] == "scheduler":
            assert _port_number(container, live["port"]) == 9192
        elif container["args"][:2] == ["queues", "exporter"]:
            assert _port_number(container, live["port"]) == 9199
        else:
            assert container["args"][0] == "workers", name
            pool = POOLS[container["args"][container["args"].index("--pool") + 1]]
            assert _port_number(container, live["port"]) == pool.metrics_port, name
            ready = container["readinessProbe"]["httpGet"]
            assert (ready["path"], _port_number(container, ready["port"])) == ("/readyz", pool.metrics_port)
            assert spec["terminationGracePeriodSeconds"] >= 600, name


def test_every_pool_has_a_deployment_and_a_scaler_on_each_of_its_queues():
    deployments, scalers = _by_kind("Deployment"), _by_kind("ScaledObject")
    auth = _by_kind("TriggerAuthentication")
    for name, pool in POOLS.items():
        target = f"shiftflow-workers-{name}"
        assert target in deployments, name
        deployment = deployments[target]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        (scaler,) = [s for s in scalers.values() if s["spec"]["scaleTargetRef"]["name"] == target]
        triggers = scaler["spec"]["triggers"]
        assert [t["metadata"]["queueName"] for t in triggers] == list(pool.queues), name
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
            assert int(trigger["metadata"]["value"]) == (pool.queue_length_per_replica
                                                         or pool.processes * pool.threads)
            assert trigger["authenticationRef"]["name"] in auth
    assert len(scalers) == len(POOLS)


def test_the_threshold_pools_plan_derives_replaces_the_default(tmp_path):
    spec = importlib.util.spec_from_file_location("render_k8s_pools", ROOT / "scripts" / "render_k8s_pools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from shiftflow.consumers.pools import load_pools

    (tmp_path / "pools.yaml").write_text("pools:\n  core: {queues: [steps], processes: 2, threads: 8}\n"
                                         "  llm: {queues: [llm], processes: 1, threads: 4, queue_length_per_replica: 240}\n")
    pools = load_pools(str(tmp_path / "pools.yaml"))
    assert module.target_per_replica(pools["core"]) == 16  # processes x threads
    assert module.target_per_replica(pools["llm"]) == 240  # as `shiftflow pools plan` printed it


def test_rendered_pool_manifests_are_current():
    spec = importlib.util.spec_from_file_location("render_k8s_pools", ROOT / "scripts" / "render_k8s_pools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (K8S / "pools.yaml").read_text() == module.render(), "run scripts/render_k8s_pools.py"


# ------------------------------------------------------------------ image


def test_dockerfile_runs_shiftflow_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim AS base$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    # The last USER of each stage wins: every stage ends unprivileged.
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert '\nENTRYPOINT ["shiftflow"]' in text
    # Images the compose file and the manifests run are the ones the Dockerfile builds.
    images = {s.get("image") for s in _compose()["services"].values() if "build" in s}
    assert images == {"shiftflow:latest", "shiftflow-tools:latest"}
    k8s_images = {c["image"] for d in _by_kind("Deployment").values() for c in d["spec"]["template"]["spec"]["containers"]}
    assert k8s_images <= images


def test_compose_mounts_files_that_exist():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
