"""The demo and bench registries find per-domain tooling by convention; `--set` is typed."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from bench import registry
from devstack import demo
from devstack.errors import DevstackError


def test_demos_and_benches_are_found_by_folder() -> None:
    assert {"camera", "echo"} <= set(demo.names())
    benches = registry.discover()
    assert [b.name for b in benches][:2] == ["runtime", "camera"]  # by ORDER
    camera = next(b for b in benches if b.name == "camera")
    assert camera.options["cameras"][0] == "10,30,100"
    assert camera.summary.startswith("Camera ingestion")


def test_only_and_set_select_and_type_a_benchmarks_settings() -> None:
    benches = registry.discover()
    camera = registry.select(["camera"], benches)
    assert [b.name for b in camera] == ["camera"]
    assert registry.select(["all"], benches) == benches
    settings = registry.parse_settings(["cameras=30", "chunk-bytes=512", "period=0.5"], camera)
    assert settings == {"camera": {"cameras": "30", "chunk_bytes": 512, "period": 0.5}}
    with pytest.raises(DevstackError, match="no benchmark nope"):
        registry.select(["nope"], benches)
    with pytest.raises(DevstackError, match="repeats"):  # runtime's, not camera's
        registry.parse_settings(["repeats=1"], camera)
    with pytest.raises(DevstackError, match="not a int"):
        registry.parse_settings(["chunks=many"], camera)


def test_run_passes_defaults_overridden_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    fake = types.ModuleType("bench.fake.bench")
    fake.run = lambda console, **kwargs: seen.update(kwargs) or True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.fake.bench", fake)
    bench = registry.Bench("fake", "fake", "a fake", 1, {"a": (1, ""), "b": (2.0, "")})
    assert bench.run(None, seconds=1.0, warmup=0.5, b=3.0)
    assert seen == {"seconds": 1.0, "warmup": 0.5, "a": 1, "b": 3.0}
