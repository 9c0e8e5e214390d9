"""The chart tier: helm and kubeconform (built once by devstack/install.py), promtool (Debian's
prometheus package, installed once when missing), rendering helpers."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import install, kind
from devstack.config import ROOT
from tests.chart import schemas

CHART = ROOT / kind.CHART
VALUES = CHART / "values.yaml"
DEV = ROOT / kind.DEV_VALUES
PRODUCTION = CHART / "values-production.yaml"
E2E = ROOT / "tests" / "e2e" / "values-e2e.yaml"
# The value sets the chart ships: overlays over values.yaml, as `helm -f` takes them.
VALUE_SETS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "dev": (DEV,),
    "production": (PRODUCTION,),
}

Manifest = dict[str, Any]


def tool(build: install.GoBinary) -> Path:
    """A pinned Go tool of the project, built on first use (a few minutes) and cached."""
    if not build.installed():
        build.install()
    return build.path


@pytest.fixture(scope="session")
def helm() -> Path:
    return tool(install.HELM)


@pytest.fixture(scope="session")
def kubeconform() -> Path:
    return tool(install.KUBECONFORM)


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Installed with apt when missing (as root; else the error says the apt-get command)."""
    if not install.PROMTOOL.installed():
        install.install_apt([install.PROMTOOL])
    found = shutil.which(install.PROMTOOL.provides)
    assert found, "apt-get installed prometheus, yet promtool is not on PATH"
    return Path(found)


@pytest.fixture(scope="session")
def schema_locations() -> list[str]:
    """Kubernetes schemas of the kind node's version (kind-config.yaml), and the CRDs'."""
    node = re.search(r"kindest/node:v([\d.]+)", (ROOT / kind.KIND_CONFIG).read_text())
    assert node, "kind-config.yaml names no kindest/node image"
    return schemas.kubeconform_locations(node.group(1))


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], cwd=ROOT, capture_output=True, text=True, check=False
    )


def value_args(overlays: tuple[Path, ...], sets: tuple[str, ...] = ()) -> list[str]:
    return [a for o in overlays for a in ("-f", str(o))] + [a for s in sets for a in ("--set", s)]


Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """`helm template` of the chart into `namespace` (default: the values' one), parsed."""
    cache: dict[tuple[tuple[Path, ...], tuple[str, ...], str | None], list[Manifest]] = {}

    def rendered(
        overlays: tuple[Path, ...] = (), sets: tuple[str, ...] = (), namespace: str | None = None
    ) -> list[Manifest]:
        if (overlays, sets, namespace) not in cache:
            result = template(helm, overlays, sets, namespace)
            assert result.returncode == 0, result.stderr
            cache[overlays, sets, namespace] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[overlays, sets, namespace]

    return rendered


def template(
    helm: Path,
    overlays: tuple[Path, ...] = (),
    sets: tuple[str, ...] = (),
    namespace: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`helm template` into `namespace` (default: values' `namespace`, the local runtime's)."""
    namespace = namespace or yaml.safe_load(VALUES.read_text())["namespace"]
    args = value_args(overlays, sets)
    return run(helm, "template", kind.RELEASE, CHART, "--namespace", namespace, *args)


def of_kind(manifests: list[Manifest], kind_name: str, api_group: str = "") -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind_name and m["apiVersion"].startswith(api_group or m["apiVersion"])
    ]


def pod_templates(manifest: Manifest) -> Iterator[dict[str, Any]]:
    """The pod templates a manifest runs, whatever the workload kind (Knative ones too)."""
    spec = manifest.get("spec") or {}
    if manifest["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]
    elif "spec" in spec.get("template", {}):
        yield spec["template"]


def containers(manifest: Manifest) -> Iterator[dict[str, Any]]:
    for pod in pod_templates(manifest):
        yield from pod["spec"].get("initContainers", [])
        yield from pod["spec"]["containers"]
