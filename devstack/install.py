"""Install what the services need, once: Debian packages, Go-built servers and the Kafka jars.

Each installer answers `installed()` cheaply (a path check, or the version embedded in a binary),
so an installed machine never touches apt, go or maven. Builds land under ~/.cache/objectflow.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devstack.config import PATHS
from devstack.errors import DevstackError

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
KAFKA_VERSION = "3.9.1"
KAFKA_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
BUILD = PATHS.cache / "build"


class Requirement(Protocol):
    @property
    def name(self) -> str: ...

    def installed(self) -> bool: ...


class Build(Requirement, Protocol):
    def install(self) -> None: ...


def run(
    cmd: Sequence[str | Path],
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> str:
    """Run a setup command and return its stdout; on failure raise with its output."""
    result = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise DevstackError(f"{what} failed: {' '.join(map(str, cmd))}\n{tail}")
    return result.stdout


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Serialise builds of one artefact across concurrent `objectflow up` runs."""
    BUILD.mkdir(parents=True, exist_ok=True)
    with (BUILD / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Apt:
    """A Debian package, recognised by a command or file it provides."""

    package: str
    provides: str

    @property
    def name(self) -> str:
        return self.package

    def installed(self) -> bool:
        return shutil.which(self.provides) is not None


@contextmanager
def no_daemon_autostart() -> Iterator[None]:
    """Stop apt from starting the distro's own daemons, which would take our ports."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# objectflow: keep apt from starting services\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def install_apt(packages: Sequence[Apt]) -> None:
    if os.geteuid() != 0:
        names = " ".join(p.package for p in packages)
        raise DevstackError(f"missing Debian packages; run: sudo apt-get install -y {names}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with build_lock("apt"), no_daemon_autostart():
        run(["apt-get", "update"], "apt-get update", env=env)
        run(
            ["apt-get", "install", "-y", "--no-install-recommends", *(p.package for p in packages)],
            "apt-get install",
            env=env,
        )


@dataclass(frozen=True)
class GoBinary:
    """A Go server built at a pinned version in a scratch module of its own.

    A scratch module (`go get -tool` + `go build`) works where `go install pkg@version` does not:
    the proxy refuses FerretDB's version list, which `go install` reads for its deprecation check.
    `files` are written into a copy of the module's source before building: generated files its
    release adds (FerretDB panics at start without build/version/version.txt).
    """

    name: str
    module: str
    package: str
    version: str
    files: tuple[tuple[str, str], ...] = ()  # (path in the module, content)
    ldflags: tuple[str, ...] = ()  # what the project's release build stamps in (versions)

    @property
    def path(self) -> Path:
        return PATHS.bin / self.name

    @property
    def stamp(self) -> Path:
        return self.path.with_name(f"{self.name}.version")

    def recipe(self) -> str:
        """What the binary was built from; a different pin or patch means a rebuild."""
        recipe = {"module": self.module, "version": self.version, "files": self.files}
        if self.ldflags:  # only when set, so stamps of binaries built without them stay valid
            recipe["ldflags"] = self.ldflags
        return json.dumps(recipe)

    def installed(self) -> bool:
        return (
            self.path.exists() and self.stamp.exists() and self.stamp.read_text() == self.recipe()
        )

    def install(self) -> None:
        workdir = BUILD / self.name
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
        with build_lock(self.name):
            if self.installed():  # another `up` built it while we waited for the lock
                return
            workdir.mkdir(parents=True, exist_ok=True)
            if not (workdir / "go.mod").exists():
                (workdir / "go.mod").write_text(f"module objectflow/{self.name}-build\n\ngo 1.24\n")
            run([go(), "get", "-tool", f"{self.package}@{self.version}"], "go get", workdir, env)
            if self.files:
                self.use_patched_source(workdir, env)
            PATHS.bin.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=PATHS.bin) as tmp:
                target = Path(tmp) / self.name
                flags = ["-ldflags", " ".join(self.ldflags)] if self.ldflags else []
                build = [go(), "build", *flags, "-o", target, self.package]
                run(build, "go build", cwd=workdir, env=env)
                target.replace(self.path)
            self.stamp.write_text(self.recipe())

    def use_patched_source(self, workdir: Path, env: dict[str, str]) -> None:
        download = run(
            [go(), "mod", "download", "-json", f"{self.module}@{self.version}"],
            "go mod download",
            workdir,
            env,
        )
        source = workdir / "src"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(json.loads(download)["Dir"], source, copy_function=shutil.copyfile)
        for directory in (source, *(p for p in source.rglob("*") if p.is_dir())):
            directory.chmod(0o755)  # the module cache is read-only, and copytree kept that
        for relative, content in self.files:
            (source / relative).write_text(content)
        run([go(), "mod", "edit", f"-replace={self.module}=./src"], "go mod edit", workdir, env)


def go() -> str:
    found = shutil.which("go") or shutil.which("/usr/local/go/bin/go")
    if found is None:
        raise DevstackError("go not found on PATH: install Go >= 1.24 from https://go.dev/dl/")
    return found


@dataclass(frozen=True)
class KafkaJars:
    """The Kafka broker and a log4j backend from Maven Central (see devstack/kafka/pom.xml)."""

    version: str = KAFKA_VERSION
    name: str = "kafka"

    @property
    def libs(self) -> Path:
        return PATHS.cache / "kafka" / self.version / "libs"

    def installed(self) -> bool:
        return (self.libs / f"kafka_2.13-{self.version}.jar").exists()

    def install(self) -> None:
        with build_lock(self.name):
            if self.installed():
                return
            staging = self.libs.with_name("libs.partial")
            shutil.rmtree(staging, ignore_errors=True)
            run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    KAFKA_POM,
                    "dependency:copy-dependencies",
                    f"-Dkafka.version={self.version}",
                    f"-DoutputDirectory={staging}",
                ],
                "maven download of the Kafka jars",
            )
            staging.replace(self.libs)


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
KAFKA = KafkaJars()
MINIO = GoBinary(
    "minio",
    "github.com/minio/minio",
    "github.com/minio/minio",
    "v0.0.0-20260212201848-7aac2a2c5b7c",
)
FERRETDB = GoBinary(
    "ferretdb",
    "github.com/FerretDB/FerretDB",
    "github.com/FerretDB/FerretDB/cmd/ferretdb",
    "v1.24.2",
    files=(("build/version/version.txt", "v1.24.2\n"),),
)
# Tools of the Kubernetes path (chart tests, `objectflow kind`), built like the servers above.
HELM_VERSION = "v3.20.2"
HELM = GoBinary(
    "helm",
    "helm.sh/helm/v3",
    "helm.sh/helm/v3/cmd/helm",
    HELM_VERSION,
    # As helm's Makefile: its own version, and the Kubernetes version of its client-go (v0.35)
    # as the default `.Capabilities.KubeVersion`, instead of the source's v1.20 placeholder.
    ldflags=(
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=35",
    ),
)
KUBECONFORM = GoBinary(
    "kubeconform",
    "github.com/yannh/kubeconform",
    "github.com/yannh/kubeconform/cmd/kubeconform",
    "v0.7.0",
)
KIND = GoBinary("kind", "sigs.k8s.io/kind", "sigs.k8s.io/kind", "v0.30.0")
# promtool checks and unit-tests the alert rules (tests/chart/test_alerts.py); Debian's
# prometheus package carries it (its daemon is kept from starting, as every package here).
PROMTOOL = Apt("prometheus", "promtool")
# The same package's server: the local stack's Prometheus (devstack/monitoring.py).
PROMETHEUS = Apt("prometheus", "prometheus")
# poppler's pdftotext and pdftoppm read and render the rollout reports' PDFs in the tests.
POPPLER = Apt("poppler-utils", "pdftotext")
# Debian's chromium and its WebDriver: the dashboard's browser tests drive it with Selenium.
CHROMIUM = Apt("chromium", "chromium")
CHROMEDRIVER = Apt("chromium-driver", "chromedriver")
APT = {
    "postgresql": Apt("postgresql-15", str(POSTGRES_BIN / "postgres")),
    "redis": Apt("redis-server", "redis-server"),
    "rabbitmq": Apt("rabbitmq-server", RABBITMQ_SERVER),
    "mosquitto": Apt("mosquitto", "mosquitto"),
    "mosquitto-clients": Apt("mosquitto-clients", "mosquitto_passwd"),
    "java": Apt("openjdk-17-jre-headless", "java"),
    "maven": Apt("maven", "mvn"),
}


def missing(needed: Sequence[Requirement]) -> tuple[list[Apt], list[Build]]:
    """What is not installed yet: Debian packages (for one apt run) and the builds."""
    todo = [r for r in dict.fromkeys(needed) if not r.installed()]
    apt = [r for r in todo if isinstance(r, Apt)]
    builds: list[Build] = [r for r in todo if isinstance(r, GoBinary | KafkaJars)]
    return apt, builds
