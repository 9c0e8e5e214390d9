"""The Kubernetes docs: every command of the README's "Run it on Kubernetes" is one these tests
render or check, and the chart README documents every value."""

from __future__ import annotations

import re
import shlex
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from devstack import install, kind, wiring
from devstack.config import CACHE, ROOT
from tests.chart.conftest import CHART, DEV, E2E, Render, run, template

README = ROOT / "README.md"
SECTION = "## Run it on Kubernetes"
KUBECTL = f"kubectl --context {kind.CONTEXT} -n {wiring.default().namespace}"
RESOURCES = {
    "ksvc": "Service", "brokers": "Broker", "triggers": "Trigger", "cronjobs": "CronJob",
    "pingsources": "PingSource", "kafkasources": "KafkaSource",
    "deployments": "Deployment", "sinkbindings": "SinkBinding",
}  # fmt: skip


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def makefile_recipe(target: str) -> str:
    match = re.search(rf"^{target}:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"no make target {target}"
    return match.group(1)


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_is_checked(command: str, render: Render, helm: Path) -> None:
    words = shlex.split(command)
    if words[0] == "make":
        (target,) = words[1:]
        action = target.removeprefix("kind-")
        assert f"objectflow kind {action}" in makefile_recipe(target)
    elif words[:2] == [".venv/bin/objectflow", "kind"]:
        assert words[2:] in (["up", "--dry-run"], ["down", "--dry-run"])  # test_dev_loop runs it
    elif command.startswith(f"{KUBECTL} get "):
        kinds = {m["kind"] for m in render((DEV, E2E))}  # kinds the chart renders
        for resource in words[-1].split(","):
            assert RESOURCES[resource] in kinds, resource
    elif command.startswith(f"{KUBECTL} run "):
        check_event_post(words[words.index("--") + 1 :])
    elif words[0] == "export":
        assert words[1] == "PATH=$HOME/.cache/objectflow/bin:$PATH"
        assert install.HELM.path.parent == install.KIND.path.parent == CACHE / "bin"
    elif words[0] == "skaffold":
        profiles = {
            p["name"] for p in yaml.safe_load((ROOT / "skaffold.yaml").read_text())["profiles"]
        }
        assert words[1:] in (["dev"], ["run", "-p", "ci"]) and "ci" in profiles
    elif words[0] == "tilt":
        assert words[1:] == ["up"] and (ROOT / "Tiltfile").exists()
    elif words[:3] == ["helm", "upgrade", "--install"]:
        check_helm_install(helm, words[3:])
    else:
        pytest.fail(f"README command nobody checks: {command}")


def check_event_post(curl: list[str]) -> None:
    """The URL is the dev broker's ingress and a declared trigger takes the event."""
    assert curl[:2] == ["curl", "-si"]
    values = wiring.load(DEV)
    broker = f"http://broker-ingress.knative-eventing.svc.cluster.local/{values.namespace}/default"
    assert curl[2] == broker
    headers = dict(curl[i + 1].split(": ", 1) for i, word in enumerate(curl) if word == "-H")
    attributes = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    assert any(trigger.matches(attributes) for _, trigger in values.routed_triggers()), attributes


def check_helm_install(helm: Path, args: list[str]) -> None:
    """The same release renders: `helm upgrade --install` as `helm template`."""
    release, chart, *flags = args
    assert (release, chart) == (kind.RELEASE, kind.CHART)
    flags.remove("--create-namespace")
    result = run(helm, "template", release, chart, *flags)
    assert result.returncode == 0, result.stderr
    assert template(helm).returncode == 0


# --- the chart README ------------------------------------------------------------------------

# Documented as a whole (their keys are Knative's or repeat another section's).
WHOLE = (wiring.Filter, wiring.DeliveryOverride, wiring.ScalingOverride, wiring.Resources)


def models(annotation: object) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path suffix, model) of the values models inside a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        yield from ((f".<name>{suffix}", m) for suffix, m in models(args[1]))
    elif origin is list:
        yield from ((f"[]{suffix}", m) for suffix, m in models(args[0]))
    elif args:
        for arg in args:
            yield from models(arg)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation


def value_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, bool]]:
    """(dotted key, whether it has keys of its own below) of every value."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        inner = [(s, m) for s, m in models(field.annotation) if m not in WHOLE]
        yield key, bool(inner)
        for suffix, nested in inner:
            yield from value_keys(nested, f"{key}{suffix}.")


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    keys = {key for key, has_keys in value_keys(wiring.Values) if not has_keys}
    assert keys - documented == set()
    assert documented - {key for key, _ in value_keys(wiring.Values)} <= {
        "functions", "functions.<name>.triggers", "schedules", "sources.kafka",
        "sources.mqtt-bridge", "sources.minio", "the rest",
    }  # fmt: skip
