"""deploy/ agrees with the code and with itself.

No container runs here. These tests read the compose file, the Kubernetes
manifests, the Dockerfile and the NATS and ClickHouse configs, and check them
against what ``stride`` reads: its subcommands and flags (the argparse parser),
its environment variables (``ENV``), the ports it serves HTTP on, its health
paths, its drain and connect timeouts; and against each other: one image built
from deploy/Dockerfile, mounted files that exist, NATS nodes that route to one
another, the ClickHouse cluster and user that the storage URL names.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import re
import shlex
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from stride.cli._main import ENV, _parser
from stride.ingest.streams import stream_configs
from stride.store import ClickHouseConfig, parse_store_url

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
NATS_CONFS = sorted((DEPLOY / "nats").glob("nats-*.conf"))
CLICKHOUSE_CONFS = sorted((DEPLOY / "clickhouse").rglob("*.xml"))

SERVICES = ("ingest", "query")
HEALTH_PATHS = ("/healthz", "/readyz")
#: After the drain, a service still shuts its HTTP server and (ingest) drains its
#: NATS connection, up to 5 s each (cli/services.py): the grace period covers that too.
AFTER_DRAIN_S = 10.0

Doc = dict[str, Any]


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> Doc:
    [doc] = load_yaml(COMPOSE)
    return doc


def k8s_docs() -> list[Doc]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path)]


def k8s_kind(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d.get("kind") == kind}


def seconds(duration: str | int | float) -> float:
    """A compose duration ("45s", "1m30s", "500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def built_image() -> str:
    """The one image compose builds from deploy/Dockerfile."""
    images = {s["image"] for s in compose()["services"].values() if "build" in s}
    assert len(images) == 1, f"compose builds {images or 'no image'}; expected one stride image"
    return images.pop()


# ---- the stride containers, from compose and from Kubernetes -------------------------------


@dataclasses.dataclass(frozen=True)
class Container:
    """One container that runs ``stride``, as the tests need it."""

    where: str
    image: str
    args: list[str]  # after the image's entrypoint, `stride`
    env: dict[str, str]
    #: (probe kind, path, port) of every health check that asks it over HTTP.
    probes: list[tuple[str, str, int]]
    grace_s: float  # SIGTERM to SIGKILL
    pre_stop_s: float  # a pause before SIGTERM
    startup_s: float  # how long health checks tolerate a service that is not up yet


def compose_containers() -> list[Container]:
    image = built_image()
    found = []
    for name, svc in compose()["services"].items():
        if svc.get("image") != image:
            continue
        check = svc.get("healthcheck", {})
        test = check.get("test", [])
        text = " ".join(test) if isinstance(test, list) else test
        urls = re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/]*)", text)
        found.append(
            Container(
                where=f"compose.yaml: {name}",
                image=svc["image"],
                args=list(svc.get("command", [])),
                env={k: str(v) for k, v in svc.get("environment", {}).items()},
                probes=[("healthcheck", path, int(port)) for port, path in urls],
                grace_s=seconds(svc.get("stop_grace_period", "10s")),  # Docker's default
                pre_stop_s=0.0,
                startup_s=seconds(check.get("start_period", 0)),
            )
        )
    return found


def k8s_env(spec: Doc) -> dict[str, str]:
    """The environment a container gets from ``envFrom`` and ``env``."""
    maps, secrets = k8s_kind("ConfigMap"), k8s_kind("Secret")
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env |= maps[source["configMapRef"]["name"]].get("data", {})
        else:
            secret = secrets[source["secretRef"]["name"]]
            env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            env |= secret.get("stringData", {})
    env |= {e["name"]: e["value"] for e in spec.get("env", [])}
    return env


def k8s_containers() -> list[Container]:
    found = []
    for name, deployment in k8s_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            ports = {p["name"]: p["containerPort"] for p in spec.get("ports", []) if "name" in p}
            probes = []
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in spec:
                    get = spec[kind]["httpGet"]
                    port = get["port"]
                    probes.append((kind, get["path"], ports.get(port, port)))
            startup = spec.get("startupProbe", {})
            sleep = spec.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            found.append(
                Container(
                    where=f"k8s Deployment {name}: {spec['name']}",
                    image=spec["image"],
                    args=list(spec.get("command", [])) + list(spec.get("args", [])),
                    env=k8s_env(spec),
                    probes=probes,
                    grace_s=float(pod.get("terminationGracePeriodSeconds", 30)),
                    pre_stop_s=float(sleep[1]) if sleep and sleep[0] == "sleep" else 0.0,
                    startup_s=startup.get("initialDelaySeconds", 0)
                    + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3),
                )
            )
    return found


CONTAINERS = compose_containers() + k8s_containers()


def parse(c: Container, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """What ``stride`` makes of the container's arguments and environment."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in c.env.items():
        monkeypatch.setenv(name, value)
    try:
        return _parser().parse_args(c.args)
    except SystemExit:
        pytest.fail(f"{c.where}: `stride {shlex.join(c.args)}` does not parse with its env")


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert COMPOSE in files and len(files) >= 5
    for path in files:
        assert load_yaml(path), f"{path} holds no YAML document"


def test_there_are_ingest_and_query_containers_in_compose_and_k8s() -> None:
    for source in (compose_containers(), k8s_containers()):
        assert sorted(c.args[0] for c in source if c.args) == sorted(SERVICES), source


def test_stride_settings_are_only_stride_environment_variables() -> None:
    for c in CONTAINERS:
        unknown = set(c.env) - set(ENV)
        assert not unknown, f"{c.where}: not read by stride: {sorted(unknown)}"
    for kind in ("ConfigMap", "Secret"):
        for name, doc in k8s_kind(kind).items():
            keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
            assert keys and keys <= set(ENV), f"{kind} {name}: {sorted(keys - set(ENV))}"
    for name, svc in compose()["services"].items():
        stride_vars = {k for k in svc.get("environment", {}) if k.startswith("STRIDE_")}
        assert stride_vars <= set(ENV), f"compose service {name}: {stride_vars - set(ENV)}"


@pytest.mark.parametrize("c", CONTAINERS, ids=lambda c: c.where)
def test_each_runs_a_stride_service_configured_by_environment_only(
    c: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the subcommand: every setting comes from the environment (no flags).
    assert len(c.args) == 1 and c.args[0] in SERVICES, f"{c.where}: runs stride {c.args}"
    args = parse(c, monkeypatch)
    assert args.command == c.args[0]
    parse_store_url(args.store)  # the form store/_url.py reads (raises ValueError if not)


@pytest.mark.parametrize("c", CONTAINERS, ids=lambda c: c.where)
def test_each_runs_the_image_built_from_deploy_dockerfile(c: Container) -> None:
    assert c.image == built_image(), f"{c.where}: {c.image}"


def test_compose_builds_the_image_from_deploy_dockerfile_at_the_repository_root() -> None:
    for name, svc in compose()["services"].items():
        if "build" in svc:
            build = svc["build"]
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_the_dockerfile_installs_stride_as_its_entrypoint_and_runs_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"""^ENTRYPOINT \["stride"\]\s*$""", text, re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "stride" in project["scripts"]
    assert re.search(r"pip install '\.\[server\]'", text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}: not in the context"


@pytest.mark.parametrize("c", CONTAINERS, ids=lambda c: c.where)
def test_health_checks_ask_healthz_or_readyz_on_the_service_port(
    c: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = parse(c, monkeypatch).http_port
    assert c.probes, f"{c.where}: no HTTP health check"
    for kind, path, probe_port in c.probes:
        assert (path, probe_port) in [(p, port) for p in HEALTH_PATHS], f"{c.where}: {kind}"
        if kind == "readinessProbe":
            assert path == "/readyz", f"{c.where}: readiness must ask /readyz"
        if kind in ("livenessProbe", "startupProbe"):
            # /readyz fails while NATS or ClickHouse is down: restarting would not help.
            assert path == "/healthz", f"{c.where}: {kind} must ask /healthz"
    if c.where.startswith("k8s"):
        assert {"livenessProbe", "readinessProbe"} <= {kind for kind, _, _ in c.probes}


@pytest.mark.parametrize("c", CONTAINERS, ids=lambda c: c.where)
def test_the_grace_period_covers_the_drain(c: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    drain = parse(c, monkeypatch).drain_timeout
    needed = c.pre_stop_s + drain + AFTER_DRAIN_S
    assert c.grace_s >= needed, f"{c.where}: {c.grace_s} s to stop; the drain needs {needed} s"


@pytest.mark.parametrize("c", CONTAINERS, ids=lambda c: c.where)
def test_health_checks_wait_for_start_up_retries(
    c: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing serves HTTP until every server is reached, each retried for up to
    --connect-timeout in turn: the object store, storage and (ingest) NATS."""
    args = parse(c, monkeypatch)
    stages = 1 + (args.objects is not None) + (args.command == "ingest")
    needed = stages * args.connect_timeout
    assert c.startup_s >= needed, f"{c.where}: start-up allowance {c.startup_s} s < {needed} s"


def test_mounted_and_listed_files_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
    for doc in k8s_docs():
        if doc.get("kind") == "Kustomization":
            for resource in doc["resources"]:
                assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"


def test_k8s_deployments_take_no_other_config_and_each_has_resources_and_a_pdb() -> None:
    pdbs = k8s_kind("PodDisruptionBudget").values()
    for name, deployment in k8s_kind("Deployment").items():
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels
        for volume in template["spec"].get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, f"{name}: config through {volume}"
        for spec in template["spec"]["containers"]:
            resources = spec.get("resources") or {}
            assert {"cpu", "memory"} <= set(resources.get("requests") or {}), f"{name}: requests"
            assert "memory" in (resources.get("limits") or {}), f"{name}: no memory limit"
        selectors = [p["spec"]["selector"]["matchLabels"].items() for p in pdbs]
        assert any(s <= labels for s in selectors), f"no PodDisruptionBudget for {name}"


def test_a_k8s_service_routes_to_the_query_port() -> None:
    [query] = [
        d for d in k8s_kind("Deployment").values() if d["metadata"]["name"].endswith("query")
    ]
    pod = query["spec"]["template"]
    names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    labels = pod["metadata"]["labels"].items()
    services = [s for s in k8s_kind("Service").values() if s["spec"]["selector"].items() <= labels]
    assert services, "no Service selects the query pods"
    for service in services:
        assert all(p["targetPort"] in names for p in service["spec"]["ports"])


# ---- NATS ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NatsConf:
    server_name: str
    cluster: str
    cluster_port: int
    routes: list[tuple[str, int]]
    max_payload: int
    store_dir: str


def read_nats_conf(path: Path) -> NatsConf:
    """The few settings checked here, from nats-server's config syntax (no includes)."""
    text = re.sub(r"#.*", "", path.read_text())

    def value(pattern: str, within: str = text) -> str:
        match = re.search(pattern, within, re.M)
        assert match, f"{path.name}: no match for {pattern}"
        return match.group(1).strip().strip("\"'")

    cluster = value(r"^cluster\s*\{([^}]*)\}")
    size = re.fullmatch(r"(\d+)\s*([KMG]?)B?", value(r"^max_payload\s*[:=]\s*(\S+)").upper())
    assert size, f"{path.name}: max_payload is not a size"
    return NatsConf(
        server_name=value(r"^server_name\s*[:=]\s*(\S+)"),
        cluster=value(r"^\s*name\s*[:=]\s*(\S+)", cluster),
        cluster_port=int(value(r"^\s*listen\s*[:=]\s*\S*:(\d+)", cluster)),
        routes=[(h, int(p)) for h, p in re.findall(r"nats(?:-route)?://([\w.-]+):(\d+)", cluster)],
        # nats-server 2.15 reads KB/MB/GB as powers of 1024 (8MB = 8388608).
        max_payload=int(size.group(1)) * 1024 ** " KMG".index(size.group(2) or " "),
        store_dir=value(r"^\s*store_dir\s*[:=]\s*(\S+)", value(r"^jetstream\s*\{([^}]*)\}")),
    )


def test_nats_nodes_form_one_cluster_routing_to_each_other() -> None:
    confs = {path.stem: read_nats_conf(path) for path in NATS_CONFS}
    assert len(confs) == 3, sorted(confs)
    assert len({c.cluster for c in confs.values()}) == 1
    names = {c.server_name for c in confs.values()}
    assert names == set(confs) and names <= set(compose()["services"])
    for stem, conf in confs.items():
        others = {(c.server_name, c.cluster_port) for s, c in confs.items() if s != stem}
        assert set(conf.routes) == others, f"{stem} routes to {conf.routes}, not {others}"


def test_nats_carries_the_largest_message_the_stream_accepts() -> None:
    largest = max(c.max_msg_size or 0 for c in stream_configs())
    for path in NATS_CONFS:
        assert read_nats_conf(path).max_payload >= largest, path.name


def test_each_nats_service_mounts_its_conf_and_keeps_jetstream_on_a_volume() -> None:
    services = compose()["services"]
    for path in NATS_CONFS:
        conf = read_nats_conf(path)
        svc = services[conf.server_name]
        mounts = dict(v.split(":")[:2] for v in svc["volumes"])
        config = svc["command"][svc["command"].index("--config") + 1]
        assert (COMPOSE.parent / next(s for s, t in mounts.items() if t == config)) == path
        volumes = [t for s, t in mounts.items() if not s.startswith(".")]
        assert any(conf.store_dir.startswith(t.rstrip("/") + "/") for t in volumes), path.name


def test_nats_server_accepts_each_conf() -> None:
    from stride.cli._nats_server import nats_server_binary

    for path in NATS_CONFS:
        run = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True
        )
        assert run.returncode == 0, f"{path.name}: {run.stderr or run.stdout}"


# ---- ClickHouse ---------------------------------------------------------------------------


def test_the_clickhouse_configs_define_the_cluster_and_user_of_the_storage_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roots = [ET.parse(path).getroot() for path in CLICKHOUSE_CONFS]
    clusters = {c.tag for r in roots for c in r.findall("remote_servers/*")}
    macros = {m.tag for r in roots for m in r.findall("macros/*")}
    users = {u.tag: u for r in roots for u in r.findall("users/*")}
    clickhouse_env = compose()["services"]["clickhouse"]["environment"]
    for c in compose_containers():
        config = parse_store_url(parse(c, monkeypatch).store)
        assert isinstance(config, ClickHouseConfig), c.where
        if config.cluster:
            assert config.cluster in clusters, f"{c.where}: cluster {config.cluster} undefined"
            assert {"shard", "replica"} <= macros
            assert any(r.find("zookeeper") is not None for r in roots)
        user = users[config.user]
        password = user.find("password")
        assert password is not None, f"user {config.user} has no password"
        expected = clickhouse_env.get(password.get("from_env", ""), password.text or "")
        assert config.password == expected, f"{c.where}: not the password ClickHouse has"
