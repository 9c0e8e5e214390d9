"""JSON schemas for kubeconform and skaffold.yaml, built offline once into ~/.cache/objectflow.

- Kubernetes: the strict schemas the PyPI package kubernetes-validate ships, for the version of
  the kind node (kind-config.yaml), with their absolute `$ref`s made relative to the directory.
- Knative: generated from the CRDs inside the Go modules of the releases `objectflow kind up`
  installs (knative.dev/serving, knative.dev/eventing, knative.dev/eventing-kafka-broker), fetched
  from proxy.golang.org; strict like kubectl (no fields a schema does not declare).
- Prometheus Operator (the PrometheusRule of `monitoring.enabled`): generated the same way from
  the CRDs in the prometheus-operator module (example/prometheus-operator-crd).
- skaffold: the schema published for an apiVersion, from the skaffold module of that release.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import requests
import yaml

from devstack import kind
from devstack.config import CACHE

PROXY = "https://proxy.golang.org"
SCHEMAS = CACHE / "schemas"
KNATIVE_MODULES = (kind.SERVING, kind.EVENTING, kind.KAFKA)
SKAFFOLD_MODULE = ("github.com/GoogleContainerTools/skaffold/v2", "v2.16.1")
PROMETHEUS_OPERATOR_MODULE = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
OBJECT = (("apiVersion", "string"), ("kind", "string"), ("metadata", "object"))


def module_zip(module: str, version: str) -> zipfile.ZipFile:
    """A module's zip from the Go module proxy (paths escape capitals as `!` + lowercase)."""
    escaped = "".join(f"!{c.lower()}" if c.isupper() else c for c in module)
    response = requests.get(f"{PROXY}/{escaped}/@v/{version}.zip", timeout=300)
    response.raise_for_status()
    return zipfile.ZipFile(io.BytesIO(response.content))


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """`SCHEMAS/name`, built by `build(directory)` unless it exists; published atomically."""
    target = SCHEMAS / name
    if not target.exists():
        SCHEMAS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=SCHEMAS) as tmp:
            build(Path(tmp) / name)
            with contextlib.suppress(OSError):  # a concurrent run published it first
                (Path(tmp) / name).rename(target)
    return target


def kubernetes(version: str) -> Path:
    """Schemas named as kubeconform looks them up: `<kind><-group-version>.json`. Their `$id`s
    (https://kubernetes.io/api/...) go, so `$ref`s resolve to the files beside them."""

    def build(directory: Path) -> None:
        package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
        directory.mkdir()
        for path in (package / f"v{version}-local-strict").glob("*.json"):
            schema = json.loads(path.read_text())
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            (directory / path.name).write_text(text)

    return cached(f"kubernetes-{version}", build)


def strict(node: Any) -> Any:
    """No properties beyond the declared ones, except where the CRD keeps unknown fields
    (as kubectl validates, and kubeconform's openapi2jsonschema generates)."""
    if isinstance(node, dict):
        keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in node and "additionalProperties" not in node and not keeps_unknown:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for item in node:
            strict(item)
    return node


class CRDLoader(yaml.SafeLoader):
    """PyYAML resolves a bare `=` (the operator's relabel actions enum) to YAML 1.1's `value`
    tag, which it cannot construct; to the API server it is the string "="."""


CRDLoader.add_constructor("tag:yaml.org,2002:value", CRDLoader.construct_yaml_str)


def crds(archive: zipfile.ZipFile, pattern: str = "*/config/*.yaml") -> Iterator[dict[str, Any]]:
    for member in archive.namelist():
        if fnmatch.fnmatch(member, pattern) and "/test/" not in member:
            for document in yaml.load_all(archive.read(member), Loader=CRDLoader):
                if (
                    isinstance(document, dict)
                    and document.get("kind") == "CustomResourceDefinition"
                ):
                    yield document


def knative() -> Path:
    """`<group>/<kind>_<version>.json` per served version of every Knative CRD."""
    pins = "-".join(f"{r.module.rsplit('/', 1)[-1]}-{r.module_version}" for r in KNATIVE_MODULES)

    def build(directory: Path) -> None:
        for release in KNATIVE_MODULES:
            for crd in crds(module_zip(release.module, release.module_version)):
                write_crd_schemas(directory, crd)

    return cached(f"knative-{pins}", build)


def prometheus_operator() -> Path:
    """`monitoring.coreos.com/<kind>_<version>.json` per CRD of the Prometheus Operator."""
    module, release = PROMETHEUS_OPERATOR_MODULE

    def build(directory: Path) -> None:
        archive = module_zip(module, release)
        for crd in crds(archive, "*/example/prometheus-operator-crd/*.yaml"):
            write_crd_schemas(directory, crd)

    return cached(f"prometheus-operator-{release}", build)


def write_crd_schemas(directory: Path, crd: dict[str, Any]) -> None:
    """`<group>/<kind>_<version>.json` of every served version of `crd`, strict."""
    group, kind_name = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        # The API server adds these to every kind; not all CRDs spell them out.
        schema.setdefault("properties", {}).update(
            {key: schema["properties"].get(key, {"type": t}) for key, t in OBJECT}
        )
        strict(schema)
        path = directory / group / f"{kind_name}_{version['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema))


def kubeconform_locations(kubernetes_version: str) -> list[str]:
    """kubeconform's `-schema-location`s: Kubernetes kinds first, then the CRDs (Knative's,
    the Prometheus Operator's)."""
    crd = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    return [
        "-schema-location",
        f"{kubernetes(kubernetes_version)}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        "-schema-location",
        f"{knative()}/{crd}",
        "-schema-location",
        f"{prometheus_operator()}/{crd}",
    ]


def skaffold(api_version: str) -> dict[str, Any]:
    """The JSON schema skaffold publishes for `skaffold/<version>`."""
    module, release = SKAFFOLD_MODULE
    version = api_version.removeprefix("skaffold/")

    def build(directory: Path) -> None:
        archive = module_zip(module, release)
        (member,) = [
            name
            for name in archive.namelist()
            if name.endswith(f"/docs-v2/content/en/schemas/{version}.json")
        ]
        directory.mkdir()
        with archive.open(member) as source, (directory / "schema.json").open("wb") as target:
            shutil.copyfileobj(source, target)

    path = cached(f"skaffold-{release}-{version}", build) / "schema.json"
    return json.loads(path.read_text())
