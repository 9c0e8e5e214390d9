"""The cluster dev loop, checked as far as a machine without Docker can: the image recipe,
kind-config.yaml, `objectflow kind up` (its plan), skaffold.yaml and the Tiltfile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from devstack import install, kind, wiring
from devstack.config import ROOT
from tests.chart import schemas
from tests.chart.conftest import CHART, DEV, Render, of_kind, pod_templates

DOCKERFILE = ROOT / "functions" / "Dockerfile"
KIND_CONFIG = ROOT / kind.KIND_CONFIG
SKAFFOLD = ROOT / "skaffold.yaml"
TILTFILE = ROOT / "Tiltfile"
REGISTRY = f"localhost:{kind.REGISTRY_PORT}"


def test_dockerfile_builds_a_non_root_image_from_the_lock() -> None:
    parser = DockerfileParser(str(DOCKERFILE))
    stages = [n for n, i in enumerate(parser.structure) if i["instruction"] == "FROM"]
    assert len(stages) >= 3, "multi-stage: uv, dependencies, runtime"
    assert parser.baseimage == "python:3.11-slim"  # the runtime stage's
    final = parser.structure[stages[-1] :]
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    sync = next(v for k, v in instructions if k == "RUN" and "uv sync" in v)
    assert "--frozen" in sync and "--no-default-groups" in sync and "uv.lock" in sync
    user = [i["value"] for i in final if i["instruction"] == "USER"]
    assert user and user[-1].split(":")[0] == "10001"  # the uid the chart's securityContext names
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "HOME=/tmp" in env and "TMPDIR=/tmp" in env  # /tmp is the writable emptyDir
    assert [i["value"] for i in final if i["instruction"] == "CMD"] == ['["functions-framework"]']


# Only the local stack, the benchmarks and the tests use these; the image must not carry them.
NOT_IN_IMAGE = {"typer", "rich", "pyyaml", "aiohttp", "matplotlib", "numpy", "psutil", "pytest"}
IN_IMAGE = {"functions-framework", "cloudevents", "pydantic", "boto3", "redis", "croniter"}


def test_image_dependencies_leave_out_the_devstack_bench_and_dev_groups() -> None:
    """What the Dockerfile's `uv sync` installs, as `uv export` resolves the same flags."""
    sync = next(
        i["value"]
        for i in DockerfileParser(str(DOCKERFILE)).structure
        if i["instruction"] == "RUN" and "uv sync" in i["value"]
    )
    flags = [w for w in sync.split("uv sync", 1)[1].split() if w != "--no-install-project"]
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    export = subprocess.run(
        [uv, "export", *flags, "--no-hashes", "--no-emit-project", "--no-header"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    names = {
        re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower()
        for line in export.stdout.splitlines()
        if line and not line.startswith((" ", "#"))
    }
    assert names >= IN_IMAGE
    assert names & NOT_IN_IMAGE == set()
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert {"devstack", "bench", "dev"} <= set(groups)


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().split("\n")
    assert "*" in lines
    assert {"!functions/", "!pyproject.toml", "!uv.lock"} <= set(lines)


def test_image_modules_the_chart_runs_exist() -> None:
    """The commands the chart gives the image are modules and functions of this repo."""
    for module in (
        "functions.sources.mqtt_bridge",
        "functions.sources.ping",
        "functions.runtime.migrate",
    ):
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module


def test_kind_config_mirrors_the_local_registry_and_maps_the_ingress_port() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == kind.CLUSTER
    (patch,) = config["containerdConfigPatches"]
    assert '[plugins."io.containerd.grpc.v1.cri".registry]' in patch
    assert 'config_path = "/etc/containerd/certs.d"' in patch
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    assert re.fullmatch(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", node["image"])
    (mapping,) = node["extraPortMappings"]
    assert mapping["containerPort"] == kind.KOURIER_NODE_PORT
    assert (mapping["hostPort"], mapping["listenAddress"]) == (80, "127.0.0.1")


def test_kind_up_plan_installs_pinned_releases_then_the_chart() -> None:
    plan = kind.up_plan()
    lines = [str(step) for step in plan]
    urls = [a for step in plan for a in step.argv if a.startswith("https://")]
    assert urls == [url for release in kind.RELEASES for url in release.urls()]
    for url in urls:
        assert re.fullmatch(
            r"https://github\.com/[\w-]+/[\w-]+/releases/download/knative-v1\.\d+\.\d+/[\w-]+\.yaml",
            url,
        )
    assert len({release.version.rsplit(".", 1)[0] for release in kind.RELEASES}) == 1  # one minor
    kubectl = [step.argv for step in plan if step.argv[0] == "kubectl"]
    assert all(argv[1:3] == ("--context", kind.CONTEXT) for argv in kubectl)
    assert f"kind create cluster --name {kind.CLUSTER} --config {kind.KIND_CONFIG}" in lines[1]
    hosts = next(step for step in plan if step.what == "registry mirror")
    assert f"/etc/containerd/certs.d/{REGISTRY}/hosts.toml" in hosts.argv[-1]
    assert hosts.stdin == f'[host."http://{kind.REGISTRY}:5000"]\n'
    image = kind.image()
    assert image.startswith(REGISTRY + "/")
    assert lines[-3:] == [
        f"docker build -t {image} -f functions/Dockerfile .",
        f"docker push {image}",
        f"helm --kube-context {kind.CONTEXT} upgrade --install objectflow charts/objectflow "
        f"--namespace objectflow --create-namespace -f {kind.DEV_VALUES} --wait --timeout 15m",
    ]
    assert [str(s) for s in kind.down_plan()] == [
        f"kind delete cluster --name {kind.CLUSTER}",
        f"docker rm -f {kind.REGISTRY}",
    ]


def test_kind_up_lets_knative_run_images_from_the_local_registry() -> None:
    """Knative resolves tags to digests from its controller, which cannot reach localhost."""
    patches = " ".join(" ".join(step.argv) for step in kind.up_plan() if "patch" in step.argv)
    assert (
        f'"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local,{REGISTRY}"' in patches
    )
    assert '"kubernetes.podspec-init-containers":"enabled"' in patches  # live-update


def test_pinned_knative_releases_are_the_modules_the_schemas_come_from() -> None:
    assert {r.module_version for r in schemas.KNATIVE_MODULES} == {"v0.43.3", "v0.43.1"}
    assert kind.SERVING.version == "1.16.3" and kind.SERVING.module_version == "v0.43.3"
    for group in ("serving.knative.dev", "eventing.knative.dev", "sources.knative.dev"):
        assert (schemas.knative() / group).is_dir()


def test_kind_cli_prints_the_plan_without_running_it() -> None:
    for command, plan in (("up", kind.up_plan()), ("down", kind.down_plan())):
        result = subprocess.run(
            [sys.executable, "-m", "devstack.cli", "kind", command, "--dry-run"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert result.stdout.splitlines() == [str(step) for step in plan]


def test_the_tools_are_pinned_and_built_by_the_project() -> None:
    assert install.KUBECONFORM.version == "v0.7.0"
    assert re.fullmatch(r"v3\.\d+\.\d+", install.HELM.version)
    assert kind.TOOLS == {"kind": install.KIND, "helm": install.HELM}


def skaffold_config() -> dict[str, Any]:
    return yaml.safe_load(SKAFFOLD.read_text())


def test_skaffold_yaml_is_valid_for_its_api_version() -> None:
    config = skaffold_config()
    assert config["apiVersion"].startswith("skaffold/v4")
    jsonschema.validate(config, schemas.skaffold(config["apiVersion"]))


def test_skaffold_builds_the_image_and_installs_the_chart_with_dev_values() -> None:
    config = skaffold_config()
    (artifact,) = config["build"]["artifacts"]
    assert artifact["docker"]["dockerfile"] == str(DOCKERFILE.relative_to(ROOT))
    assert artifact["image"] == kind.image().rsplit(":", 1)[0]
    (sync,) = artifact["sync"]["manual"]
    assert (sync["src"], sync["dest"]) == ("functions/**/*.py", "/app")
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == kind.CHART and release["valuesFiles"] == [kind.DEV_VALUES]
    assert release["namespace"] == wiring.default().namespace
    key = re.sub(r"[./:-]", "_", artifact["image"])  # skaffold's template name for the image
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{key}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{key}}}}}@{{{{.IMAGE_DIGEST_{key}}}}}",
    }
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"dev", "ci"}
    (live,) = profiles["dev"]["patches"]
    assert live["value"] == {"live-update": True}


class Tilt:
    """Runs the Tiltfile (Starlark, here a Python subset) against recording stand-ins."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}

    def recorder(self, name: str, returns: Any = None) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.setdefault(name, []).append((args, kwargs))
            return returns

        return record

    def run(self) -> None:
        names = [
            "allow_k8s_contexts", "default_registry", "docker_build", "k8s_kind", "k8s_yaml",
            "k8s_resource", "sync", "fall_back_on", "link", "port_forward",
        ]  # fmt: skip
        scope: dict[str, Any] = {name: self.recorder(name) for name in names}
        scope["helm"] = self.recorder("helm", returns="<rendered>")
        scope["read_yaml"] = lambda path: yaml.safe_load((ROOT / path).read_text())
        exec(compile(TILTFILE.read_text(), str(TILTFILE), "exec"), scope)


@pytest.fixture(scope="module")
def tilt() -> Tilt:
    recorded = Tilt()
    recorded.run()
    return recorded


def test_tiltfile_builds_the_image_with_live_update(tilt: Tilt) -> None:
    ((_, context), build) = tilt.calls["docker_build"][0]
    assert context == "." and build["dockerfile"] == str(DOCKERFILE.relative_to(ROOT))
    assert tilt.calls["sync"] == [(("functions", "/app/functions"), {})]
    ((triggers,), _) = tilt.calls["fall_back_on"][0]
    assert "uv.lock" in triggers
    assert tilt.calls["default_registry"] == [((REGISTRY,), {})]
    assert tilt.calls["allow_k8s_contexts"] == [((kind.CONTEXT,), {})]


def test_tiltfile_deploys_the_chart_with_dev_values_and_its_images(
    tilt: Tilt, render: Render
) -> None:
    ((chart,), options) = tilt.calls["helm"][0]
    assert chart == kind.CHART and options["values"] == [kind.DEV_VALUES]
    assert options["namespace"] == wiring.default().namespace
    assert tilt.calls["k8s_yaml"] == [(("<rendered>",), {})]
    manifests = render((DEV,), tuple(options["set"]))
    built = {args[0] for args, _ in tilt.calls["docker_build"]}
    deployed = {
        container["image"].split(":")[0]
        for manifest in manifests
        for pod in pod_templates(manifest)
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
    }
    assert built <= deployed  # every image it builds is one the chart runs
    knative_paths = {p for _, kw in tilt.calls["k8s_kind"] for p in _as_list(kw["image_json_path"])}
    for service in of_kind(manifests, "Service", "serving.knative.dev"):
        spec = service["spec"]["template"]["spec"]
        assert (
            spec["initContainers"]
            and "{.spec.template.spec.initContainers[*].image}" in knative_paths
        )


def test_tiltfile_resources_name_rendered_objects(tilt: Tilt, render: Render) -> None:
    ((_,), options) = tilt.calls["helm"][0]
    manifests = render((DEV,), tuple(options["set"]))
    names = {m["metadata"]["name"] for m in manifests}
    kinds = {(m["metadata"]["name"], m["kind"].lower()) for m in manifests}
    for args, options in tilt.calls["k8s_resource"]:
        if args:
            assert args[0] in names, args[0]
            assert options["labels"]
        for selector in options.get("objects", []):
            assert tuple(selector.split(":")) in kinds, selector


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_values_dev_image_is_what_kind_up_pushes() -> None:
    dev = yaml.safe_load(DEV.read_text())
    assert f"{dev['image']['repository']}:{dev['image']['tag']}" == kind.image()
    assert (CHART / "values-dev.yaml") == DEV
