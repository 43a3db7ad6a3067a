"""Static checks of the Kubernetes deployment: Dockerfile, skaffold.yaml and deploy/ (kustomize).

No cluster, kubectl, kustomize or skaffold is needed: manifests are read with PyYAML, the
overlays are put together by a small model of kustomize (resources, components and
strategic-merge patches of Deployments), and every INTERLOCK_* variable a manifest sets is
checked against the settings dataclass of the service that reads it.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlock._settings import SettingsError, load_settings
from interlock.services.budget.config import BudgetSettings
from interlock.services.ratelimit.config import RateLimitSettings
from interlock.services.router.config import RouterSettings
from interlock.services.traceingest.config import TraceIngestSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
SKAFFOLD = ROOT / "skaffold.yaml"

Manifest = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """How the process in an image is configured: env prefix and settings dataclass."""

    prefix: str
    cls: type[Any]


# Every image skaffold builds, and the settings its process reads (None: command-line args only).
IMAGES: dict[str, ServiceSettings | None] = {
    "interlock-router": ServiceSettings("INTERLOCK_ROUTER_", RouterSettings),
    "interlock-ratelimit": ServiceSettings("INTERLOCK_RATELIMIT_", RateLimitSettings),
    "interlock-budget": ServiceSettings("INTERLOCK_BUDGET_", BudgetSettings),
    "interlock-traceingest": ServiceSettings("INTERLOCK_TRACEINGEST_", TraceIngestSettings),
    "interlock-fakeprovider": None,
}
# Path settings that are inputs the operator mounts; every other `*_path` field is state the
# service writes, so in a pod with a read-only root it must lie on a writable volume.
INPUT_PATH_FIELDS = frozenset({"routing_path", "limits_path", "price_overrides_path"})
DEPRECATED_KUSTOMIZE_KEYS = frozenset(
    {"bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars", "imageTags"}
)
# List fields merged by key in a strategic-merge patch (the subset these manifests use).
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "name"}


# --- reading -----------------------------------------------------------------------------


def load_docs(path: Path) -> list[Manifest]:
    docs: list[Manifest] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        assert isinstance(doc, dict), f"{path}: every YAML document must be a mapping"
        docs.append(doc)
    return docs


def load_one(path: Path) -> Manifest:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def rel(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT))


KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
COMPONENT_DIRS = sorted(p.parent for p in KUSTOMIZATIONS if p.parent.parent == DEPLOY / "components")
OVERLAY_DIRS = sorted(p.parent for p in KUSTOMIZATIONS if p.parent.parent == DEPLOY / "overlays")


def kustomization_refs(kfile: Path) -> list[Path]:
    """Every file or folder a kustomization names: resources, components, patch files."""
    k = load_one(kfile)
    refs = [kfile.parent / str(entry) for key in ("resources", "components") for entry in k.get(key) or []]
    refs += [kfile.parent / str(patch["path"]) for patch in k.get("patches") or [] if "path" in patch]
    return refs


@dataclasses.dataclass
class Tree:
    """What a kustomization accumulates: resource documents and patch documents."""

    resources: list[Manifest] = dataclasses.field(default_factory=list)
    patches: list[Manifest] = dataclasses.field(default_factory=list)

    def add(self, other: Tree) -> None:
        self.resources += other.resources
        self.patches += other.patches


def collect(directory: Path) -> Tree:
    k = load_one(directory / "kustomization.yaml")
    tree = Tree()
    for entry in k.get("resources") or []:
        path = directory / str(entry)
        if path.is_dir():
            tree.add(collect(path))
        else:
            tree.resources += load_docs(path)
    for entry in k.get("components") or []:
        tree.add(collect(directory / str(entry)))
    for patch in k.get("patches") or []:
        tree.patches += load_docs(directory / str(patch["path"]))
    return tree


def merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """A strategic merge limited to what these manifests use: maps, and lists keyed by MERGE_KEYS."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        items = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(items) if old.get(key) == item.get(key)), None)
            if index is None:
                items.append(item)
            else:
                items[index] = merge(items[index], item)
        return items
    return patch


def ident(doc: Manifest) -> tuple[str, str]:
    return str(doc["kind"]), str(doc["metadata"]["name"])


def render(directories: list[Path]) -> list[Manifest]:
    """Resources of the kustomizations in `directories` with all their patches applied."""
    tree = Tree()
    for directory in directories:
        tree.add(collect(directory))
    resources = copy.deepcopy(tree.resources)
    idents = [ident(doc) for doc in resources]
    assert len(idents) == len(set(idents)), f"duplicate resources: {sorted(idents)}"
    for patch in tree.patches:
        assert ident(patch) in idents, f"patch of {ident(patch)} has no such resource"
        index = idents.index(ident(patch))
        resources[index] = merge(resources[index], patch)
    return resources


# Each set of manifests that can be deployed: base alone, each overlay, base with every component.
RENDER_SETS: dict[str, list[Path]] = {
    "base": [DEPLOY / "base"],
    **{rel(d): [d] for d in OVERLAY_DIRS},
    "base+all-components": [DEPLOY / "base", *COMPONENT_DIRS],
}


def rendered(name: str) -> list[Manifest]:
    return render(RENDER_SETS[name])


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def skaffold() -> Manifest:
    return load_one(SKAFFOLD)


def skaffold_images() -> set[str]:
    return {str(a["image"]) for a in skaffold()["build"]["artifacts"]}


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), from the Dockerfile."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2) or match.group(1), [])
        if current is not None:
            current.append(line)
    return stages


def quantity(value: object) -> float:
    """A Kubernetes resource quantity (`100m`, `1`, `512Mi`, `2Gi`) as a number."""
    units = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match and match.group(2) in units, f"bad quantity {value!r}"
    return float(match.group(1)) * units[match.group(2)]


def literal_env(container: Manifest) -> dict[str, str]:
    return {str(e["name"]): str(e["value"]) for e in container.get("env") or [] if "value" in e}


def settings_of(container: Manifest) -> Any:
    """The settings object the container's process would load from its literal env values."""
    service = IMAGES[container["image"]]
    assert service is not None
    return load_settings(service.cls, service.prefix, literal_env(container))


def prestop_seconds(container: Manifest) -> int:
    prestop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in prestop:
        return int(prestop["sleep"]["seconds"])
    command = (prestop.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] == "sleep":
        return int(command[1])
    return 0


def deployment_containers(name: str) -> list[tuple[str, Manifest, Manifest]]:
    """(id, Deployment, container) for every container of every Deployment in a render set."""
    try:
        docs = rendered(name)
    except (AssertionError, OSError, KeyError, yaml.YAMLError):
        return []  # test_render_set_resolves_patches_and_references reports why
    return [
        (f"{name}:{d['metadata']['name']}/{c['name']}", d, c)
        for d in of_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


CONTAINERS = [item for name in RENDER_SETS for item in deployment_containers(name)]
CONTAINER_IDS = [item[0] for item in CONTAINERS]


# --- kustomize ---------------------------------------------------------------------------


def test_deploy_has_base_components_and_dev_overlay() -> None:
    assert DEPLOY / "base" / "kustomization.yaml" in KUSTOMIZATIONS
    assert {d.name for d in COMPONENT_DIRS} == {"fake-provider", "kafka-clickhouse"}
    assert DEPLOY / "overlays" / "dev" in OVERLAY_DIRS


@pytest.mark.parametrize("kfile", KUSTOMIZATIONS, ids=rel)
def test_kustomization_parses_and_its_references_exist(kfile: Path) -> None:
    k = load_one(kfile)
    if kfile.parent in COMPONENT_DIRS:
        assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    else:
        assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    assert not DEPRECATED_KUSTOMIZE_KEYS & k.keys(), "kustomize v5 syntax: use resources/components/patches/labels"
    for patch in k.get("patches") or []:
        assert "path" in patch, f"{rel(kfile)}: patches here are files (path:)"
    for entry in k.get("components") or []:
        target = kfile.parent / str(entry) / "kustomization.yaml"
        assert target.is_file(), f"{rel(kfile)}: component {entry} has no kustomization.yaml"
        assert load_one(target)["kind"] == "Component"
    for ref in kustomization_refs(kfile):
        assert ref.exists(), f"{rel(kfile)} names {ref.relative_to(kfile.parent)}, which does not exist"
        if ref.is_dir():
            assert (ref / "kustomization.yaml").is_file(), f"{rel(ref)} is no kustomization"
        else:
            load_docs(ref)


def test_every_manifest_file_is_referenced() -> None:
    referenced = {ref.resolve() for kfile in KUSTOMIZATIONS for ref in kustomization_refs(kfile)}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            assert path.resolve() in referenced, f"{rel(path)} is not used by any kustomization"


@pytest.mark.parametrize("name", RENDER_SETS)
def test_render_set_resolves_patches_and_references(name: str) -> None:
    docs = rendered(name)  # asserts every patch finds its resource
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in of_kind(docs, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        for volume in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["spec"]["containers"]:
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                if ref is not None:
                    assert ref["key"] in config_maps.get(ref["name"], {}), f"{env['name']}: no ConfigMap key {ref}"
            # host:port or scheme://host:port in a literal value: an in-cluster Service and its port.
            for var, value in literal_env(container).items():
                match = re.fullmatch(r"(?:https?://)?([a-z][a-z0-9-]*):(\d+)(?:/.*)?", value)
                if match and match.group(1) != "localhost":
                    service = services.get(match.group(1))
                    assert service is not None, f"{var}={value}: no Service {match.group(1)} in {name}"
                    ports = {int(p["port"]) for p in service["spec"]["ports"]}
                    assert int(match.group(2)) in ports, f"{var}={value}: Service has ports {ports}"


@pytest.mark.parametrize("name", RENDER_SETS)
def test_services_select_a_deployment_and_its_named_ports(name: str) -> None:
    docs = rendered(name)
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        pods = [
            d["spec"]["template"]
            for d in of_kind(docs, "Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} Deployments"
        container_ports = {p["name"]: p["containerPort"] for c in pods[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["name"] in container_ports, f"Service port {port['name']} is no container port"
            assert port["targetPort"] in (port["name"], container_ports[port["name"]])
            assert port["port"] == container_ports[port["name"]]


# --- Deployments ----------------------------------------------------------------------


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_container_is_hardened_and_sized(cid: str, deployment: Manifest, container: Manifest) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security.get("runAsUser", 1) != 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    assert not security.get("privileged", False)
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind]), f"{cid}: {kind}"
    # A read-only root leaves /tmp unwritable unless a volume is mounted there.
    writable = writable_mounts(pod, container)
    assert "/tmp" in writable, f"{cid}: no writable /tmp"


def writable_mounts(pod: Manifest, container: Manifest) -> set[str]:
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    return {
        m["mountPath"]
        for m in container.get("volumeMounts") or []
        if not m.get("readOnly", False)
        and ("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]])
    }


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_container_probes_its_port(cid: str, deployment: Manifest, container: Manifest) -> None:
    assert container["image"] in skaffold_images(), f"{cid}: image {container['image']} is no skaffold artifact"
    port, *others = container["ports"]  # the serving port first; the router adds its event-loop gRPC port
    assert [p["name"] for p in others] in ([], ["grpc-loop"]), cid
    number = port["containerPort"]
    # Interlock services speak gRPC; only the fake provider is plain HTTP.
    assert port["name"] == ("http" if IMAGES[container["image"]] is None else "grpc"), cid
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if port["name"] == "grpc":
            # Native gRPC probe: grpc.health.v1 on the serving port, overall ("") status.
            assert spec["grpc"]["port"] == number, f"{cid}: {probe}"
            assert not spec["grpc"].get("service")
        else:
            assert spec["httpGet"]["port"] in (number, "http"), f"{cid}: {probe}"


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_env_names_are_settings_fields(cid: str, deployment: Manifest, container: Manifest) -> None:
    names = [str(e["name"]) for e in container.get("env") or []]
    assert len(names) == len(set(names)), f"{cid}: duplicate env {names}"
    service = IMAGES[container["image"]]
    interlock_vars = [n for n in names if n.startswith("INTERLOCK_")]
    if service is None:
        assert not interlock_vars, f"{cid}: takes no INTERLOCK_* settings"
        return
    fields = {f.name for f in dataclasses.fields(service.cls)}
    for var in interlock_vars:
        assert var.startswith(service.prefix), f"{cid}: {var} is read by another service"
        assert var.removeprefix(service.prefix).lower() in fields, f"{cid}: {var} is no {service.cls.__name__} field"
    try:
        settings_of(container)
    except SettingsError as exc:
        pytest.fail(f"{cid}: {exc}")


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_process_listens_where_kubernetes_looks(cid: str, deployment: Manifest, container: Manifest) -> None:
    port, *others = container["ports"]
    if IMAGES[container["image"]] is None:
        args = container["args"]
        assert args[args.index("--host") + 1] == "0.0.0.0", cid
        assert int(args[args.index("--port") + 1]) == port["containerPort"], cid
        return
    settings = settings_of(container)
    # Probes and Services reach the pod IP: loopback (the settings' default) would not do.
    assert settings.host == "0.0.0.0", cid
    assert settings.port == port["containerPort"], cid
    for extra in others:  # the router's event-loop gRPC port, on the same host
        assert getattr(settings, "loop_grpc_port", None) == extra["containerPort"], cid


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_termination_grace_outlasts_the_service_grace(cid: str, deployment: Manifest, container: Manifest) -> None:
    pod = deployment["spec"]["template"]["spec"]
    grace = 0.0 if IMAGES[container["image"]] is None else float(settings_of(container).grace_s)
    assert pod["terminationGracePeriodSeconds"] > prestop_seconds(container) + grace, cid


@pytest.mark.parametrize(("cid", "deployment", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_state_paths_are_on_writable_volumes(cid: str, deployment: Manifest, container: Manifest) -> None:
    service = IMAGES[container["image"]]
    if service is None:
        return
    settings = settings_of(container)
    writable = writable_mounts(deployment["spec"]["template"]["spec"], container)
    for field in dataclasses.fields(service.cls):
        if not field.name.endswith("_path") or field.name in INPUT_PATH_FIELDS:
            continue
        path = Path(getattr(settings, field.name))
        assert path.is_absolute(), f"{cid}: {field.name}={path} must be set to a volume path"
        assert any(path.is_relative_to(m) and Path(m) != Path("/tmp") for m in writable), (
            f"{cid}: {field.name}={path} is on no writable volume (mounts: {sorted(writable)})"
        )


@pytest.mark.parametrize("name", RENDER_SETS)
def test_deployments_with_a_claim_run_alone(name: str) -> None:
    for deployment in of_kind(rendered(name), "Deployment"):
        volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
        if any("persistentVolumeClaim" in v for v in volumes):
            # One ReadWriteOnce volume, one SQLite writer: never two pods, not even during a rollout.
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_router_wiring_and_budget_ledger() -> None:
    docs = rendered(rel(DEPLOY / "overlays" / "dev"))
    (router,) = (d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "router")
    settings = settings_of(router["spec"]["template"]["spec"]["containers"][0])
    assert settings.budget_target == "budget:50053"
    assert settings.ratelimit_target == "ratelimit:50052"
    assert settings.otlp_endpoint == "traceingest:50054"
    assert settings.fake_provider_url == "http://fakeprovider:8089/v1"
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    # The event-loop gRPC port is on, named on the container and published by the Service.
    container_ports = {
        p["name"]: p["containerPort"] for p in router["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports["grpc-loop"] == settings.loop_grpc_port == 50055
    service = next(d for d in of_kind(docs, "Service") if d["metadata"]["name"] == "router")
    assert {"name": "grpc-loop", "port": 50055, "targetPort": "grpc-loop"} in service["spec"]["ports"]
    (budget,) = (d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "budget")
    volumes = budget["spec"]["template"]["spec"]["volumes"]
    assert any("persistentVolumeClaim" in v for v in volumes)


def test_kafka_clickhouse_component_feeds_env_from_its_config_map() -> None:
    docs = rendered("base+all-components")
    env = {
        e["name"]: e["valueFrom"]["configMapKeyRef"]["key"]
        for d in of_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env") or []
        if "valueFrom" in e
    }
    assert env == {
        "INTERLOCK_BUDGET_KAFKA_BOOTSTRAP": "KAFKA_BOOTSTRAP",
        "INTERLOCK_TRACEINGEST_KAFKA_BOOTSTRAP": "KAFKA_BOOTSTRAP",
        "INTERLOCK_TRACEINGEST_CLICKHOUSE_URL": "CLICKHOUSE_URL",
    }


# --- skaffold and the Dockerfile ----------------------------------------------------------


def test_skaffold_builds_one_image_per_service_from_dockerfile_targets() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    artifacts = config["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == list(IMAGES)
    stages = dockerfile_stages()
    for artifact in artifacts:
        context = ROOT / artifact.get("context", ".")
        docker = artifact["docker"]
        assert (context / docker.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        target = docker["target"]
        assert artifact["image"] == f"interlock-{target}"
        assert target in stages, f"Dockerfile has no stage {target}"
        entrypoints = [line for line in stages[target] if line.startswith("ENTRYPOINT")]
        assert entrypoints == [f'ENTRYPOINT ["python", "-m", "interlock.services.{target}"]']
        assert importlib.util.find_spec(f"interlock.services.{target}.__main__") is not None


def test_skaffold_renders_the_dev_overlay_and_uses_every_image() -> None:
    config = skaffold()
    paths = [ROOT / p for p in config["manifests"]["kustomize"]["paths"]]
    assert paths == [DEPLOY / "overlays" / "dev"]
    assert config["deploy"] == {"kubectl": {}}
    docs = render(paths)
    used = {c["image"] for d in of_kind(docs, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]}
    assert used == skaffold_images()
    forwards = [(f["resourceType"], f["resourceName"], f["port"], f["localPort"]) for f in config["portForward"]]
    assert forwards == [("service", "router", 50051, 50051), ("service", "router", 50055, 50055)]
    router = next(d for d in of_kind(docs, "Service") if d["metadata"]["name"] == "router")
    assert {50051, 50055} <= {p["port"] for p in router["spec"]["ports"]}


def test_dockerfile_builds_a_wheel_and_runs_as_the_pods_user() -> None:
    stages = dockerfile_stages()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text().splitlines()
    assert stages["build"][0] == "FROM ${PYTHON_IMAGE} AS build"
    assert stages["runtime"][0] == "FROM ${PYTHON_IMAGE} AS runtime"
    assert any(line.startswith("RUN pip wheel") for line in stages["build"])
    for line in (line for lines in stages.values() for line in lines if line.startswith("COPY")):
        words = shlex.split(line)[1:]
        if any(w.startswith("--from") for w in words):
            continue
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    (user,) = [line.split()[1] for line in stages["runtime"] if line.startswith("USER")]
    uid = int(user.split(":")[0])
    assert uid != 0
    for target in ("router", "ratelimit", "budget", "traceingest", "fakeprovider"):
        assert stages[target][0] == f"FROM runtime AS {target}"
    run_as = {
        d["spec"]["template"]["spec"]["securityContext"].get("runAsUser")
        for name in RENDER_SETS
        for d in of_kind(rendered(name), "Deployment")
    }
    assert run_as == {uid}
