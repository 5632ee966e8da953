"""Static checks of deploy/: the Kubernetes manifests, the Dockerfile and the Grafana dashboard.

The manifests are validated offline against the Kubernetes API schemas that kubernetes-validate ships; the
kustomizations are rendered with kubectl's built-in kustomize when kubectl is installed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from support.upstreams import LABELS

from routeproxy.cli import build_parser
from routeproxy.counters.metrics import VERDICTS, Metrics
from routeproxy.settings import SETTINGS, Tier, UpstreamKind, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"
CONFIG_FILE = K8S / "base" / "routeproxy.yaml"  # routeproxy's config, turned into a ConfigMap by kustomize
VLLM_CONFIG_FILE = K8S / "vllm" / "routeproxy.yaml"  # the vllm layout's replacement for it
CONFIG_FILES = (CONFIG_FILE, VLLM_CONFIG_FILE)
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
VLLM_EXAMPLE = K8S / "vllm" / "vllm-example.yaml"
SERVICE_MONITOR = K8S / "monitoring" / "servicemonitor.yaml"
# Kinds of the Prometheus Operator's CRDs: kubernetes-validate has no schema for them (checked field by field below).
OPERATOR_KINDS = {"ServiceMonitor"}
REDIS_URL = "redis://routeproxy-redis:6379/0"
SECRET_NAME = "routeproxy-secrets"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def manifest_files() -> list[Path]:
    return sorted(
        path for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml" and path not in CONFIG_FILES
    )


@cache
def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


# The layouts `kubectl apply -k` takes (a Component, such as monitoring/, only goes into one of them).
LAYOUTS = sorted(
    path.parent.name
    for path in K8S.glob("*/kustomization.yaml")
    if kustomization(path.parent)["kind"] == "Kustomization"
)


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] not in OPERATOR_KINDS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open(encoding="utf-8") as stream:
        return tuple(doc for doc in yaml.safe_load_all(stream) if doc is not None)


def all_objects() -> Iterator[dict[str, Any]]:
    for path in manifest_files():
        yield from documents(path)


def objects_of(kind: str, layout: str | None = None) -> list[dict[str, Any]]:
    paths = manifest_files() if layout is None else sorted((K8S / layout).glob("*.yaml"))
    return [
        obj
        for path in paths
        if path.name != "kustomization.yaml" and path not in CONFIG_FILES
        for obj in documents(path)
        if obj["kind"] == kind
    ]


def one(kind: str, layout: str | None = None) -> dict[str, Any]:
    found = objects_of(kind, layout)
    assert len(found) == 1, f"expected one {kind} in {layout or 'deploy/k8s'}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads() -> list[dict[str, Any]]:
    return [obj for obj in all_objects() if obj["kind"] in WORKLOAD_KINDS]


def routeproxy_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs the routeproxy image."""
    return [
        (workload, container)
        for workload in workloads()
        for container in all_containers(pod_spec(workload))
        if container["image"].split(":")[0] == "routeproxy"
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container.get("env", [])}


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(int(entry["containerPort"]) for entry in container["ports"] if entry.get("name") == port)


def render(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations (kubectl kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)


@cache
def rendered(layout: str) -> tuple[dict[str, Any], ...]:
    return render(K8S / layout)


# -- the manifests ------------------------------------------------------------------------------------


def test_the_layouts_exist() -> None:
    assert {"base", "sidecar", "shared-tier", "vllm"} <= set(LAYOUTS)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_manifest_is_a_valid_kubernetes_object(path: Path) -> None:
    objects = documents(path)
    assert objects, f"{path} holds no object"
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kustomization_renders_valid_objects(layout: str) -> None:
    objects = rendered(layout)
    assert objects
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize(
    ("layout", "config_file"), [("sidecar", CONFIG_FILE), ("shared-tier", CONFIG_FILE), ("vllm", VLLM_CONFIG_FILE)]
)
def test_kustomization_includes_redis_and_the_config(layout: str, config_file: Path) -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered(layout)}
    assert ("StatefulSet", "routeproxy-redis") in kinds
    assert ("Service", "routeproxy-redis") in kinds
    config_maps = [obj for obj in rendered(layout) if obj["kind"] == "ConfigMap"]
    assert [obj["data"]["routeproxy.yaml"] for obj in config_maps] == [config_file.read_text(encoding="utf-8")]
    # The secret is created once, by hand, so `kubectl apply -k` never overwrites real keys with placeholders.
    assert "Secret" not in {kind for kind, _ in kinds}


def test_every_routeproxy_container_mounts_the_config_where_the_image_reads_it() -> None:
    config_path = Path(dockerfile_cmd()[dockerfile_cmd().index("--config") + 1])
    for workload, container in routeproxy_containers():
        volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
        mounts = [mount for mount in container["volumeMounts"] if mount["mountPath"] == str(config_path.parent)]
        assert len(mounts) == 1, f"{workload['metadata']['name']}: nothing mounted at {config_path.parent}"
        assert volumes[mounts[0]["name"]]["configMap"]["name"] == "routeproxy-config"


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    assert routeproxy_containers()
    for workload, container in routeproxy_containers():
        name = workload["metadata"]["name"]
        liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert liveness["path"] == "/healthz", name
        assert readiness["path"] == "/readyz", name
        assert port_number(container, liveness["port"]) == port_number(container, readiness["port"]) == 8001
        if "startupProbe" in container:
            assert container["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")


def test_termination_grace_outlasts_the_drain() -> None:
    drain_s = load_settings(CONFIG_FILE, environ={}).server.drain_seconds
    for workload, container in routeproxy_containers():
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_s = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        assert grace > drain_s + pre_stop_s, f"{workload['metadata']['name']}: {grace} s"


def test_routeproxy_pods_get_no_service_links() -> None:
    """A Service named `routeproxy` would otherwise put ROUTEPROXY_PORT=tcp://<ip>:8001 and more ROUTEPROXY_*
    variables into every pod of the namespace, next to routeproxy's own settings."""
    for workload, _ in routeproxy_containers():
        assert pod_spec(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]


@pytest.mark.parametrize("workload", workloads(), ids=lambda workload: workload["metadata"]["name"])
def test_containers_run_as_non_root_with_resource_limits(workload: dict[str, Any]) -> None:
    spec = pod_spec(workload)
    pod_security = spec.get("securityContext", {})
    for container in all_containers(spec):
        security = {**pod_security, **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, container["name"]
        assert security.get("runAsUser", 1) != 0, container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], container["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]


def test_routeproxy_gets_redis_and_its_secrets() -> None:
    secret_keys = set(one("Secret")["stringData"])
    for workload, container in routeproxy_containers():
        env = env_of(container)
        assert env["REDIS_URL"] == REDIS_URL
        for name in ("HF_TOKEN", "ROUTEPROXY_ADMIN_TOKEN", "ROUTEPROXY_API_KEYS"):
            reference = env[name]["secretKeyRef"]
            assert reference["name"] == SECRET_NAME, (workload["metadata"]["name"], name)
            assert reference["key"] in secret_keys
            # A Secret without HF_TOKEN (vLLM or TGI upstreams need none) must still start the pod: no
            # CreateContainerConfigError. The keys routeproxy's own security rests on stay required.
            assert reference.get("optional", False) is (name == "HF_TOKEN"), (workload["metadata"]["name"], name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        redis_policy = one("NetworkPolicy")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert redis_policy.items() <= labels.items(), "the routeproxy pods must pass Redis' NetworkPolicy"


def test_secret_example_only_holds_placeholders_and_says_to_replace_them() -> None:
    secret = one("Secret")
    assert secret["metadata"]["name"] == SECRET_NAME
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    assert "REPLACE" in SECRET_EXAMPLE.read_text(encoding="utf-8").splitlines()[0]


def test_sidecar_app_talks_to_routeproxy_on_loopback() -> None:
    deployment = one("Deployment", "sidecar")
    spec = pod_spec(deployment)
    sidecars = [container for container in spec["initContainers"] if container["name"] == "routeproxy"]
    assert len(sidecars) == 1
    # A native sidecar: started before the app, stopped after it.
    assert sidecars[0]["restartPolicy"] == "Always"
    (app,) = spec["containers"]
    env = env_of(app)
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8001/v1"
    assert env["OPENAI_API_KEY"]["secretKeyRef"]["name"] == SECRET_NAME
    assert env["OPENAI_API_KEY"]["secretKeyRef"]["key"] in one("Secret")["stringData"]


def test_shared_tier_is_served_scaled_and_protected_from_disruption() -> None:
    deployment = one("Deployment", "shared-tier")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    service = one("Service", "shared-tier")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == 8001

    hpa = one("HorizontalPodAutoscaler", "shared-tier")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "routeproxy"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]

    pdb = one("PodDisruptionBudget", "shared-tier")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_redis_persists_its_counts() -> None:
    statefulset = one("StatefulSet")
    (redis,) = pod_spec(statefulset)["containers"]
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in redis["volumeMounts"]

    services = {service["metadata"]["name"]: service for service in objects_of("Service", "base")}
    redis_service = services["routeproxy-redis"]
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    assert redis_service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert statefulset["spec"]["serviceName"] in services


# -- the routeproxy config in the ConfigMap -------------------------------------------------------------


def test_configmap_is_generated_from_the_config_file() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "routeproxy-config"
    assert generator["files"] == [CONFIG_FILE.name]


def check_config(config_file: Path, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`routeproxy check-config` on a copy of the file, with none of routeproxy's variables but these."""
    config = tmp_path / "routeproxy.yaml"
    config.write_text(config_file.read_text(encoding="utf-8"), encoding="utf-8")
    ours = {setting.env for setting in SETTINGS} | {"ROUTEPROXY_CONFIG", "HF_TOKEN"}
    environ = {name: value for name, value in os.environ.items() if name not in ours} | variables
    return subprocess.run(
        [sys.executable, "-m", "routeproxy", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    # The pod gets HF_TOKEN from routeproxy-secrets; the default config's tiers are on the HF router and need it.
    result = check_config(CONFIG_FILE, tmp_path, HF_TOKEN="hf_from_the_secret")
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_configmap_config_routes_with_the_first_week_ratio_on_the_hf_router() -> None:
    settings = load_settings(CONFIG_FILE, environ={"HF_TOKEN": "hf_test"})
    assert settings.routing.enabled is True
    assert settings.routing.ab_test_ratio == 0.1
    assert settings.server.port == 8001
    assert settings.server.workers == 1
    assert settings.counters.redis_url is None  # REDIS_URL comes from the pod's environment
    for tier in Tier:
        config = settings.tiers[tier]
        assert config.kind is UpstreamKind.HF
        assert config.base_url == "https://router.huggingface.co/v1"
        assert (config.api_key_env, config.api_key) == ("HF_TOKEN", "hf_test")


# -- the vllm layout: routeproxy in front of vLLM servers in the cluster -----------------------------------


def test_vllm_layout_replaces_only_the_config_of_the_shared_tier() -> None:
    overlay = kustomization(K8S / "vllm")
    assert overlay["resources"] == ["../shared-tier"]
    (generator,) = overlay["configMapGenerator"]
    assert generator == {"name": "routeproxy-config", "behavior": "replace", "files": [VLLM_CONFIG_FILE.name]}

    def names(layout: str) -> set[tuple[str, str]]:
        # The ConfigMap's name ends in a hash of its content, which is what differs.
        return {
            (
                obj["kind"],
                obj["metadata"]["name"].rpartition("-")[0] if obj["kind"] == "ConfigMap" else obj["metadata"]["name"],
            )
            for obj in rendered(layout)
        }

    assert names("vllm") == names("shared-tier")


def test_vllm_layout_config_passes_check_config_without_a_hugging_face_token(tmp_path: Path) -> None:
    result = check_config(VLLM_CONFIG_FILE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def served_model_names() -> dict[tuple[str, int], str]:
    """(Service name, port) -> the --served-model-name of the vLLM server behind it, from vllm-example.yaml."""
    objects = documents(VLLM_EXAMPLE)
    names = {}
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        (deployment,) = [
            obj
            for obj in objects
            if obj["kind"] == "Deployment"
            and service["spec"]["selector"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        ]
        (container,) = pod_spec(deployment)["containers"]
        args = container["args"]
        served = args[args.index("--served-model-name") + 1]
        assert port_number(container, service["spec"]["ports"][0]["targetPort"]) == int(args[args.index("--port") + 1])
        names[service["metadata"]["name"], service["spec"]["ports"][0]["port"]] = served
    return names


def test_vllm_layout_sends_each_tier_the_model_name_its_server_serves() -> None:
    settings = load_settings(VLLM_CONFIG_FILE, environ={})
    served = served_model_names()
    assert len(served) == 2
    for tier in Tier:
        config = settings.tiers[tier]
        url = urlsplit(config.base_url)
        assert (config.kind, url.scheme, url.path) == (UpstreamKind.VLLM, "http", "/v1")
        assert served[url.hostname, url.port] == config.model, tier  # else vLLM answers every request 404
        assert config.api_key is None  # no token goes to an in-cluster server


def test_vllm_example_servers_need_no_hugging_face_token_to_start() -> None:
    for deployment in (obj for obj in documents(VLLM_EXAMPLE) if obj["kind"] == "Deployment"):
        (container,) = pod_spec(deployment)["containers"]
        assert env_of(container)["HF_TOKEN"]["secretKeyRef"]["optional"] is True


# -- the ServiceMonitor (Prometheus Operator) ----------------------------------------------------------------


def test_monitoring_is_a_component_holding_the_service_monitor() -> None:
    component = kustomization(K8S / "monitoring")
    assert (component["apiVersion"], component["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    assert component["resources"] == [SERVICE_MONITOR.name]


def test_service_monitor_scrapes_metrics_from_the_shared_tier_service(tmp_path: Path) -> None:
    # The component added to the shared tier, as the docs tell users to: the rendered ServiceMonitor must select the
    # rendered Service and name one of its ports.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "shared-tier", overlay)],
                "components": [os.path.relpath(K8S / "monitoring", overlay)],
            }
        ),
        encoding="utf-8",
    )
    objects = render(overlay)
    (monitor,) = [obj for obj in objects if obj["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (service,) = [obj for obj in objects if obj["kind"] == "Service" and obj["metadata"]["name"] == "routeproxy"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    others = [obj for obj in objects if obj["kind"] == "Service" and obj is not service]
    assert all(
        not monitor["spec"]["selector"]["matchLabels"].items() <= obj["metadata"]["labels"].items() for obj in others
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}


# -- the Dockerfile -------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    instructions = []
    for line in logical:
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def exec_form(keyword: str) -> list[str]:
    (arguments,) = [arguments for name, arguments in final_stage() if name == keyword]
    value = json.loads(arguments)
    assert isinstance(value, list)
    return [str(item) for item in value]


def dockerfile_cmd() -> list[str]:
    return exec_form("CMD")


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    stages = [arguments.split() for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(stages) >= 2
    assert all(stage[0] == "python:3.11-slim" for stage in stages)
    assert stages[0][1:] == ["AS", "builder"] or stages[0][1:] == ["as", "builder"]
    final = " ".join(arguments for _, arguments in final_stage())
    assert "from=builder" in final, "the final stage installs what the builder stage built"
    assert not re.search(r"\b(apt-get|apt|gcc|build-essential)\b", final), "no build tools in the final image"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so Kubernetes' runAsNonRoot can check it; and the same uid the manifests ask for.
    assert user.isdigit()
    for _, container in routeproxy_containers():
        assert container["securityContext"]["runAsUser"] == int(user)


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_parses() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint == ["routeproxy"]
    assert entrypoint[0] in scripts
    cmd = dockerfile_cmd()
    assert cmd == ["serve", "--host", "0.0.0.0", "--config", "/etc/routeproxy/routeproxy.yaml"]
    args = build_parser().parse_args(cmd)
    assert (args.command, args.host, args.config) == ("serve", "0.0.0.0", "/etc/routeproxy/routeproxy.yaml")
    assert [arguments for keyword, arguments in final_stage() if keyword == "EXPOSE"] == ["8001"]


def copy_sources() -> list[str]:
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        if any(word.startswith("--from") for word in shlex.split(arguments)):
            continue  # from another stage, not from the repository
        sources.extend(words[:-1])
    return sources


def test_every_copy_source_exists_and_is_not_docker_ignored() -> None:
    sources = copy_sources()
    assert sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert source.split("/")[0] in included, f"COPY {source}: excluded by Dockerfile.dockerignore"


# -- the Grafana dashboard ------------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana" / "routeproxy-dashboard.json").read_text(encoding="utf-8"))
    panels: list[dict[str, Any]] = dashboard["panels"]
    return panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def exposed_sample_names() -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = Metrics(LABELS).render()
    return {sample.name for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def test_dashboard_queries_only_series_that_metrics_exposes() -> None:
    queries = dashboard_queries()
    assert queries
    exposed = exposed_sample_names()
    queried = {name for query in queries for name in re.findall(r"\brouteproxy_[a-z0-9_]+", query)}
    assert queried <= exposed, f"not exposed by routeproxy.counters.metrics: {sorted(queried - exposed)}"


def test_dashboard_covers_the_ab_metrics() -> None:
    queries = "\n".join(dashboard_queries())
    for needle in (
        'routeproxy_requests_total{tier="3b"}',
        "histogram_quantile(0.95, sum by (tier, le) (rate(routeproxy_upstream_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (tier, le) (rate(routeproxy_upstream_latency_seconds_bucket",
        "routeproxy_upstream_errors_total",
        "routeproxy_ab_test_ratio",
        "routeproxy_fallbacks_total",
        "routeproxy_inflight_requests",
    ):
        assert needle in queries


def test_dashboard_covers_quality_rollout_and_cascade() -> None:
    queries = "\n".join(dashboard_queries())
    for needle in (
        "sum by (tier, kind) (rate(routeproxy_feedback_total",
        "sum by (reason) (rate(routeproxy_feedback_rejected_total",
        "max by (tier) (routeproxy_quality_mean_score)",
        "max by (tier) (routeproxy_quality_feedback_events)",
        *(f'routeproxy_quality_degradation_ratio{{bound="{bound}"}}' for bound in ("point", "low", "high")),
        *(f'routeproxy_quality_verdict{{verdict="{verdict}"}}' for verdict in VERDICTS),
        "routeproxy_rollout_step",
        "routeproxy_rollout_paused",
        "routeproxy_cascade_mode",
        "sum by (complexity) (rate(routeproxy_cascade_escalations_total[$__rate_interval])) / sum by (complexity) "
        "(rate(routeproxy_cascade_checked_total[$__rate_interval]))",
        "routeproxy_cascade_escalation_failures_total",
        "routeproxy_cascade_small_seconds_total",
        "sum by (type) (rate(routeproxy_cascade_small_tokens_total",
        *(
            f"histogram_quantile({quantile}, sum by (le) (rate(routeproxy_cascade_{series}_seconds_bucket"
            for quantile in (0.5, 0.95)
            for series in ("added_latency", "hold")
        ),
    ):
        assert needle in queries, needle


def test_dashboard_verdict_panel_names_every_verdict() -> None:
    (panel,) = [
        panel
        for panel in dashboard_panels()
        if any("routeproxy_quality_verdict" in target["expr"] for target in panel.get("targets", []))
    ]
    assert panel["type"] == "stat"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert sorted(entry["text"] for entry in mapping["options"].values()) == sorted(VERDICTS)


def test_dashboard_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    in_reading_order = sorted(panels, key=lambda panel: (panel["gridPos"]["y"], panel["gridPos"]["x"]))
    assert [panel["id"] for panel in in_reading_order] == sorted(ids), "ids increase down and across the page"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} is wider than the 24-column grid"
    for first, second in itertools.combinations(panels, 2):
        a, b = first["gridPos"], second["gridPos"]
        overlap_x = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
        overlap_y = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
        assert not (overlap_x and overlap_y), f"{first['title']!r} and {second['title']!r} overlap"
