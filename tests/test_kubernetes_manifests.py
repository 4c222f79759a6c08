"""deploy/kubernetes: every overlay renders with kustomize, validates strictly offline, and keeps the invariants
that make many replicas safe: probes that mean what they say, a locked-down pod, sized resources, the shim's
own ports and paths, and a grace period that covers the drain.

No cluster can run here: rendering is `kubectl kustomize`, validation is deploy/validate_manifests.py in the
tools environment scripts/install makes (.venv-deploy).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import tomllib
import yaml

from fastai_serving import defaults
from fastai_serving_client.cli import EXIT_FAILED_INPUTS, build_parser
from fastai_serving_shim import metrics
from fastai_serving_shim.settings import Settings, env_name
from harness import PROJECT_ROOT

OVERLAYS = ["cpu", "gpu", "kserve", "kserve-v2", "store-pvc", "store-init", "hpa-in-flight", "secured"]
KSERVE = ("kserve", "kserve-v2")  # an InferenceService, not a Deployment of our own
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # the oldest we state, and the newest kubernetes-validate bundles
TOOLS_PYTHON = PROJECT_ROOT / ".venv-deploy" / "bin" / "python"
IMAGE_USER = 10001  # Dockerfile.cpu and .gpu: USER 10001
WRITABLE = {"/tmp", "/srv/logs"}  # what the image writes: temp files, TorchServe's logs and unpacked archives


BATCH_JOB = "batch-job"  # deploy/kubernetes/batch-job: predict-batch as an Indexed Job, not an overlay of the server


@cache
def rendered(overlay: str) -> str:
    folder = PROJECT_ROOT / "deploy" / "kubernetes" / (overlay if overlay == BATCH_JOB else f"overlays/{overlay}")
    result = subprocess.run(
        ["kubectl", "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(overlay: str, kind: str | None = None) -> list[dict]:
    documents = [document for document in yaml.safe_load_all(rendered(overlay)) if document]
    return [document for document in documents if kind is None or document["kind"] == kind]


def pod_spec(overlay: str) -> dict:
    """The pod template of the overlay's server: the Deployment's, or the InferenceService's predictor."""
    if overlay in KSERVE:
        return resources(overlay, "InferenceService")[0]["spec"]["predictor"]
    return resources(overlay, "Deployment")[0]["spec"]["template"]["spec"]


def server_container(overlay: str) -> dict:
    (container,) = pod_spec(overlay)["containers"]
    return container


def settings_of(overlay: str) -> Settings:
    (config_map,) = resources(overlay, "ConfigMap")
    environment = {key: value for key, value in config_map["data"].items()}
    return Settings.from_env(environment)


def validate(manifests: list[Path], versions: list[str]) -> subprocess.CompletedProcess:
    """deploy/validate_manifests.py in the tools environment."""
    flags = [flag for version in versions for flag in ("--kubernetes", version)]
    command = [str(TOOLS_PYTHON), str(PROJECT_ROOT / "deploy" / "validate_manifests.py"), *flags, *map(str, manifests)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> subprocess.CompletedProcess:
    """Every overlay, rendered and validated in one run of the validator."""
    folder = tmp_path_factory.mktemp("rendered")
    for overlay in [*OVERLAYS, BATCH_JOB]:
        (folder / f"{overlay}.yaml").write_text(rendered(overlay))
    return validate([folder / f"{overlay}.yaml" for overlay in [*OVERLAYS, BATCH_JOB]], KUBERNETES_VERSIONS)


def test_every_overlay_and_the_batch_job_validate_strictly_against_kubernetes_and_kserve(validation):
    assert validation.returncode == 0, validation.stdout + validation.stderr
    count = sum(len(resources(overlay)) for overlay in [*OVERLAYS, BATCH_JOB])
    versions = ", ".join(KUBERNETES_VERSIONS)
    assert f"validated {count} resources against Kubernetes {versions}: 0 problems" in validation.stdout


def test_the_validator_refuses_an_unknown_field(tmp_path):
    documents = resources("kserve")
    documents[-1]["spec"]["predictor"]["containers"][0]["livenessProbes"] = {}
    manifest = tmp_path / "wrong.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    result = validate([manifest], KUBERNETES_VERSIONS[:1])
    assert result.returncode == 1 and "livenessProbes: unknown field of V1Container" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_present_distinct_and_on_the_shims_own_routes(overlay):
    container = server_container(overlay)
    paths = {
        probe: container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/"}
    openapi = yaml.safe_load((PROJECT_ROOT / "shim" / "rest" / "openapi.yaml").read_text())["paths"]
    assert all("get" in openapi[path] for path in paths.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a large model loads in that time
    assert container["readinessProbe"]["failureThreshold"] == 1  # a draining replica leaves at its first 503


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_non_root_on_a_read_only_root_with_nothing_to_escalate(overlay):
    pod = pod_spec(overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == IMAGE_USER
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_USER
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounted = {mount["mountPath"] for mount in server_container(overlay)["volumeMounts"] if mount["name"] in empty_dirs}
    assert WRITABLE <= mounted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    pod = pod_spec(overlay)
    for container in pod["containers"] + pod.get("initContainers", []):
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (container["name"], bound)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_prestop_drain_accepted_requests_and_torchserves_stop(overlay):
    pod, container, settings = pod_spec(overlay), server_container(overlay), settings_of(overlay)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert int(command[1]) == defaults.PRESTOP_S
    waits = settings.drain_s + settings.graceful_timeout_s + defaults.FRONT_STOP_MARGIN_S + defaults.TORCHSERVE_STOP_S
    assert pod["terminationGracePeriodSeconds"] >= defaults.PRESTOP_S + waits  # serve's waits: scripts/serve.py


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_configmap_holds_only_settings_the_shim_reads(overlay):
    (config_map,) = resources(overlay, "ConfigMap")
    known = {env_name(name) for name in Settings.__dataclass_fields__}
    assert set(config_map["data"]) <= known
    settings_of(overlay)  # and each converts to its type


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_container_ports_and_scrape_annotations_are_the_shims(overlay):
    container = server_container(overlay)
    expected = [defaults.SHIM_PORT] if overlay in KSERVE else [defaults.SHIM_PORT, defaults.GRPC_PORT]
    assert [port["containerPort"] for port in container["ports"]] == expected
    annotated = resources(overlay, "InferenceService") or [resources(overlay, "Deployment")[0]["spec"]["template"]]
    annotations = annotated[0]["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/port"] == str(defaults.SHIM_PORT) and annotations["prometheus.io/path"] == "/metrics"
    )


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o not in KSERVE])
def test_the_service_hpa_and_pdb_point_at_the_deployments_pods(overlay):
    (deployment,) = resources(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = resources(overlay, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]]
    assert ports == [(defaults.SHIM_PORT, "http"), (defaults.GRPC_PORT, "grpc")]
    (budget,) = resources(overlay, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (autoscaler,) = resources(overlay, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }


def test_the_default_hpa_scales_on_cpu():
    (autoscaler,) = resources("cpu", "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_in_flight_hpa_scales_on_the_shims_own_gauge():
    (autoscaler,) = resources("hpa-in-flight", "HorizontalPodAutoscaler")
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == metrics.IN_FLIGHT._name


def test_the_gpu_overlay_asks_for_a_gpu_where_nvidias_device_plugin_offers_one():
    pod, container = pod_spec("gpu"), server_container("gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container["image"].endswith(":gpu")


def test_the_kserve_overlay_is_a_raw_deployment_custom_predictor_with_our_image():
    (service,) = resources("kserve", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert re.fullmatch(r".+/fastai-serving:cpu", server_container("kserve")["image"])


def test_the_kserve_v2_overlay_declares_the_open_inference_protocol_and_changes_nothing_else():
    v1, v2 = resources("kserve", "InferenceService")[0], resources("kserve-v2", "InferenceService")[0]
    assert server_container("kserve-v2").pop("env") == [
        {"name": "PROTOCOL", "value": "v2"}
    ]  # KServe's custom predictor
    assert "env" not in server_container("kserve")
    v2["spec"]["predictor"]["containers"][0].pop("env")
    assert v1 == v2


@pytest.mark.parametrize("overlay, mount", [("store-pvc", "persistentVolumeClaim"), ("store-init", "emptyDir")])
def test_model_archives_can_come_from_a_volume(overlay, mount):
    pod = pod_spec(overlay)
    (store,) = [m for m in server_container(overlay)["volumeMounts"] if m["mountPath"] == "/srv/model_store"]
    volume = next(v for v in pod["volumes"] if v["name"] == store["name"])
    assert mount in volume and store.get("readOnly") is True
    assert Path("/srv/model_store").as_posix() in (PROJECT_ROOT / "Dockerfile.cpu").read_text()


def batch_pod() -> dict:
    (job,) = resources(BATCH_JOB, "Job")
    return job["spec"]["template"]["spec"]


def batch_arguments() -> argparse.Namespace:
    """The Job's predict-batch arguments as predict-batch itself parses them, its $(VARIABLES) filled in."""
    (container,) = batch_pod()["containers"]
    (source,) = container["envFrom"]
    (settings,) = [
        c for c in resources(BATCH_JOB, "ConfigMap") if c["metadata"]["name"] == source["configMapRef"]["name"]
    ]
    values = {**settings["data"], "DATABASE_URL": "postgresql://chips@db/chips", "SHARD_INDEX": "5"}
    arguments = [re.sub(r"\$\((\w+)\)", lambda variable: values[variable[1]], text) for text in container["args"]]
    return build_parser().parse_args(arguments)


def test_the_batch_job_runs_the_images_own_predict_batch_on_the_servers_service():
    (container,) = batch_pod()["containers"]
    client = tomllib.loads((PROJECT_ROOT / "client" / "pyproject.toml").read_text())
    assert container["command"] == ["predict-batch"] and "predict-batch" in client["project"]["scripts"]
    assert container["image"] == server_container("cpu")["image"]
    (service,) = resources("cpu", "Service")
    assert batch_arguments().server == f"http://{service['metadata']['name']}:{defaults.SHIM_PORT}"


def test_the_batch_jobs_indexes_are_its_shards():
    (job,) = resources(BATCH_JOB, "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = batch_pod()["containers"]
    (index,) = [variable for variable in container["env"] if variable["name"] == "SHARD_INDEX"]
    annotation = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == annotation
    assert batch_arguments().shard == f"5/{job['spec']['completions']}"
    assert batch_arguments().out.startswith("postgresql://")  # pods keep no disk: the table is the record


def test_a_shard_that_finished_with_failed_tiles_is_not_rerun():
    (job,) = resources(BATCH_JOB, "Job")
    (rule,) = [rule for rule in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in rule]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [EXIT_FAILED_INPUTS]
    assert job["spec"]["backoffLimitPerIndex"] >= 1 and batch_pod()["restartPolicy"] == "Never"


def test_the_batch_pod_runs_non_root_on_a_read_only_root_with_bounded_resources():
    pod = batch_pod()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == IMAGE_USER
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o not in KSERVE])
def test_a_network_policy_admits_traffic_to_the_pods_on_the_fronts_ports_only(overlay):
    (deployment,) = resources(overlay, "Deployment")
    (policy,) = resources(overlay, "NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [(port["port"], port["protocol"]) for port in rule["ports"]] == [
        (defaults.SHIM_PORT, "TCP"), (defaults.GRPC_PORT, "TCP")
    ]  # fmt: skip


def test_the_secured_overlays_policy_names_its_callers_and_the_batch_jobs_pods_are_among_them():
    (policy,) = resources("secured", "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    (pods,) = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer]
    assert any("namespaceSelector" in peer for peer in rule["from"])
    (job,) = resources(BATCH_JOB, "Job")
    assert pods.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    (base_rule,) = resources("cpu", "NetworkPolicy")[0]["spec"]["ingress"]
    assert "from" not in base_rule  # the base admits any source, on the fronts' ports only


def test_the_secured_overlay_reads_keys_and_certificates_from_secret_volumes_that_rotate_in_place():
    settings, pod, container = settings_of("secured"), pod_spec("secured"), server_container("secured")
    assert settings.keyed and settings.tls and settings.metrics_access == "keyed" and not settings.keyed_health
    secrets = {volume["name"]: volume["secret"] for volume in pod["volumes"] if "secret" in volume}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"] if mount["name"] in secrets}
    for path in (settings.api_keys_file, settings.tls_cert_file, settings.tls_key_file):
        (mount,) = [m for folder, m in mounts.items() if str(Path(path).parent) == folder]
        assert mount["readOnly"] is True and "subPath" not in mount  # a subPath mount never sees a Secret's update
        assert secrets[mount["name"]]["defaultMode"] == 0o440  # the pod's group (fsGroup 10001) reads it, no one else


def test_the_secured_overlays_probes_use_https_on_the_open_health_routes():
    container = server_container("secured")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["path"] in ("/ready", "/")
    annotations = resources("secured", "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
