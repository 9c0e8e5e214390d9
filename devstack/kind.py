"""`objectflow kind up|down`: a local Knative cluster on kind, with the chart installed.

`up` starts a local registry (localhost:5001), creates the cluster from kind-config.yaml, points
its containerd at the registry, installs pinned Knative releases (Serving + Kourier, Eventing +
the MT channel broker, the Kafka source and broker), builds and pushes the function image, then
installs the chart with charts/objectflow/values-dev.yaml. Every step is idempotent, so `up`
also repairs a half-built cluster. `--dry-run` prints the plan instead. Needs Docker and kubectl;
kind and helm are built by the project (devstack/install.py).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.markup import escape

from devstack import install, wiring
from devstack.config import ROOT
from devstack.errors import DevstackError

CLUSTER = "objectflow"
CONTEXT = f"kind-{CLUSTER}"
NODE = f"{CLUSTER}-control-plane"
KIND_CONFIG = "kind-config.yaml"
REGISTRY = "kind-registry"
REGISTRY_PORT = 5001
REGISTRY_IMAGE = "registry:2.8.3"
KOURIER_NODE_PORT = 31080  # kind-config.yaml maps it to 127.0.0.1:80
DOMAIN = "127.0.0.1.sslip.io"  # <service>.<namespace>.127.0.0.1.sslip.io resolves to localhost
KOURIER_CLASS = "kourier.ingress.networking.knative.dev"
KOURIER_NODE_PORT_SPEC = {
    "type": "NodePort",
    "ports": [{"name": "http2", "port": 80, "targetPort": 8080, "nodePort": KOURIER_NODE_PORT}],
}
UNRESOLVED = f"kind.local,ko.local,dev.local,localhost:{REGISTRY_PORT}"
CHART = "charts/objectflow"
DEV_VALUES = f"{CHART}/values-dev.yaml"
RELEASE = "objectflow"


@dataclass(frozen=True)
class Release:
    """A pinned Knative release: manifests from its GitHub release, CRDs from its Go module."""

    repo: str  # GitHub owner/name
    version: str  # Knative release, e.g. 1.16.3
    module: str  # Go module on proxy.golang.org
    manifests: tuple[str, ...]

    @property
    def module_version(self) -> str:
        """Knative tags release 1.N.P as Go module version v0.(N+27).P."""
        major, minor, patch = (int(part) for part in self.version.split("."))
        assert major == 1, self.version
        return f"v0.{minor + 27}.{patch}"

    def urls(self) -> list[str]:
        base = f"https://github.com/{self.repo}/releases/download/knative-v{self.version}"
        return [f"{base}/{name}" for name in self.manifests]


# One Knative minor release throughout: eventing-kafka-broker 1.16.1 is its newest release
# whose module the Go proxy serves, and the chart tests validate against these modules' CRDs.
SERVING = Release(
    "knative/serving", "1.16.3", "knative.dev/serving", ("serving-crds.yaml", "serving-core.yaml")
)
KOURIER = Release(
    "knative/net-kourier", "1.16.0", "knative.dev/net-kourier", ("kourier.yaml",)
)  # fmt: skip
EVENTING = Release(
    "knative/eventing",
    "1.16.3",
    "knative.dev/eventing",
    (
        "eventing-crds.yaml",
        "eventing-core.yaml",
        "in-memory-channel.yaml",
        "mt-channel-broker.yaml",
    ),
)
KAFKA = Release(
    "knative-extensions/eventing-kafka-broker",
    "1.16.1",
    "knative.dev/eventing-kafka-broker",
    ("eventing-kafka-controller.yaml", "eventing-kafka-source.yaml", "eventing-kafka-broker.yaml"),
)
RELEASES = (SERVING, KOURIER, EVENTING, KAFKA)


@dataclass(frozen=True)
class Step:
    what: str
    argv: tuple[str, ...]
    stdin: str = ""
    unless: tuple[str, ...] = ()  # a probe: when it succeeds, the step is done already
    ok_if: str = ""  # error output that means the step was done already

    def __str__(self) -> str:
        line = shlex.join(self.argv)
        if self.stdin:
            line += f" <<< {self.stdin.strip().splitlines()[0]!r}..."
        if self.unless:
            line += f"  # unless: {shlex.join(self.unless)}"
        return line


def cmd(line: str) -> tuple[str, ...]:
    return tuple(shlex.split(line))


def kubectl(line: str, stdin: str = "", what: str = "") -> Step:
    argv = cmd(f"kubectl --context {CONTEXT} {line}")
    return Step(what or f"kubectl {argv[3]}", argv, stdin)


def apply_urls(release: Release) -> list[Step]:
    steps = []
    for url in release.urls():
        steps.append(kubectl(f"apply -f {url}", what=f"{release.module} {release.version}"))
        if url.endswith(("-crds.yaml", "-controller.yaml")):  # CRDs before what uses them
            steps.append(kubectl("wait --for=condition=Established crd --all --timeout=2m"))
    return steps


def patch(kind: str, name: str, namespace: str, data: dict[str, object]) -> Step:
    body = shlex.quote(json.dumps(data, separators=(",", ":")))
    return kubectl(f"patch {kind} {name} -n {namespace} --type merge -p {body}", what=name)


def serving_config(name: str, data: dict[str, str]) -> Step:
    return patch("configmap", name, "knative-serving", {"data": data})


def wait_available(namespace: str) -> Step:
    return kubectl(f"wait deployment --all -n {namespace} --for=condition=Available --timeout=10m")


def image() -> str:
    """The dev image, as values-dev.yaml names it (the chart pulls it from the registry)."""
    dev = wiring.load(ROOT / DEV_VALUES).image
    return f"{dev.repository}:{dev.tag}"


def up_plan() -> list[Step]:
    hosts = f"/etc/containerd/certs.d/localhost:{REGISTRY_PORT}"
    registry_hosting = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local-registry-hosting\n"
        "  namespace: kube-public\ndata:\n  localRegistryHosting.v1: |\n"
        f'    host: "localhost:{REGISTRY_PORT}"\n'
        '    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"\n'
    )
    namespace = wiring.default().namespace
    return [
        Step(
            "local registry",
            cmd(
                f"docker run -d --restart=always -p 127.0.0.1:{REGISTRY_PORT}:5000 "
                f"--network bridge --name {REGISTRY} {REGISTRY_IMAGE}"
            ),
            unless=cmd(f"docker start {REGISTRY}"),
        ),
        Step(
            "cluster",
            cmd(f"kind create cluster --name {CLUSTER} --config {KIND_CONFIG}"),
            unless=cmd(f"kind get kubeconfig --name {CLUSTER}"),
        ),
        # containerd (config_path, patched in by kind-config.yaml) resolves localhost:5001 to the
        # registry container, as kind's local-registry guide does.
        Step(
            "registry mirror",
            (*cmd(f"docker exec -i {NODE} sh -c"), f"mkdir -p {hosts} && cat > {hosts}/hosts.toml"),
            stdin=f'[host."http://{REGISTRY}:5000"]\n',
        ),
        Step(
            "registry on the kind network",
            cmd(f"docker network connect kind {REGISTRY}"),
            ok_if="already exists",
        ),
        kubectl("apply -f -", stdin=registry_hosting, what="document the registry"),
        *apply_urls(SERVING),
        *apply_urls(KOURIER),
        serving_config("config-network", {"ingress-class": KOURIER_CLASS}),
        serving_config("config-domain", {DOMAIN: ""}),
        # Knative resolves image tags to digests from its controller, which cannot reach the
        # registry as localhost:5001.
        serving_config("config-deployment", {"registries-skipping-tag-resolving": UNRESOLVED}),
        # live-update (skaffold dev, tilt up) copies functions/ into a writable volume first.
        serving_config("config-features", {"kubernetes.podspec-init-containers": "enabled"}),
        patch("service", "kourier", "kourier-system", {"spec": KOURIER_NODE_PORT_SPEC}),
        *apply_urls(EVENTING),
        *apply_urls(KAFKA),
        wait_available("knative-serving"),
        wait_available("kourier-system"),
        wait_available("knative-eventing"),
        Step("image", cmd(f"docker build -t {image()} -f functions/Dockerfile .")),
        Step("push", cmd(f"docker push {image()}")),
        Step(
            "chart",
            cmd(
                f"helm --kube-context {CONTEXT} upgrade --install {RELEASE} {CHART} "
                f"--namespace {namespace} --create-namespace -f {DEV_VALUES} "
                "--wait --timeout 15m"
            ),
        ),
    ]


def down_plan() -> list[Step]:
    return [
        Step("cluster", cmd(f"kind delete cluster --name {CLUSTER}")),
        Step("local registry", cmd(f"docker rm -f {REGISTRY}")),
    ]


TOOLS = {"kind": install.KIND, "helm": install.HELM}


def execute(plan: list[Step], say: Callable[[str], None]) -> None:
    """Run the steps in order from the repository root; stop at the first failure."""
    for build in {TOOLS[s.argv[0]] for s in plan if s.argv[0] in TOOLS}:
        if not build.installed():
            say(f"building {build.name} {build.version} (cached afterwards)")
            build.install()
    for step in plan:
        if step.unless and _run(step.unless).returncode == 0:
            say(f"{step.what}: already there")
            continue
        say(f"{step.what}: {step}")
        result = _run(step.argv, step.stdin)
        if result.returncode != 0 and not (step.ok_if and step.ok_if in result.stderr):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise DevstackError(f"{step.what} failed: {shlex.join(step.argv)}\n{tail}")


def _run(argv: tuple[str, ...], stdin: str = "") -> subprocess.CompletedProcess[str]:
    tool = TOOLS.get(argv[0])
    command = [str(tool.path) if tool else argv[0], *argv[1:]]
    try:
        return subprocess.run(
            command, cwd=ROOT, input=stdin, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise DevstackError(f"{argv[0]} not found: kind up needs Docker and kubectl") from None


app = typer.Typer(
    help="A local Knative cluster on kind with the chart installed (needs Docker and kubectl).",
    no_args_is_help=True,
)
console = Console(highlight=False)
DRY_RUN = typer.Option(False, "--dry-run", help="Print the commands instead of running them.")


def _go(plan: list[Step], dry_run: bool) -> None:
    if dry_run:
        for step in plan:
            typer.echo(str(step))
        return
    execute(plan, lambda line: console.print(escape(line), soft_wrap=True))


@app.command()
def up(dry_run: bool = DRY_RUN) -> None:
    """Start the local registry (localhost:5001), create the cluster (kind-config.yaml), install
    Knative Serving + Kourier, Eventing + MT channel broker, the Kafka source and broker, build
    and push the image, and helm-install the chart with values-dev.yaml. Idempotent."""
    _go(up_plan(), dry_run)
    if not dry_run:
        console.print(f"up: kubectl --context {CONTEXT} -n {wiring.default().namespace} get ksvc")


@app.command()
def down(dry_run: bool = DRY_RUN) -> None:
    """Delete the cluster and the local registry."""
    _go(down_plan(), dry_run)
