"""The local Prometheus's scrape config (devstack/prometheus.py) and what it scrapes: the
runtime's processes that serve metrics (devstack/stack.py `metrics_targets`)."""

from __future__ import annotations

from devstack import prometheus, stack, wiring
from tests.support import E2E_OVERLAY


def test_only_processes_serving_metrics_are_targets_each_of_its_kind() -> None:
    values = wiring.load(E2E_OVERLAY)
    targets = stack.metrics_targets(values, [E2E_OVERLAY])
    kinds = {name: target["kind"] for name, target in targets.items()}
    assert kinds["broker"] == "broker"
    assert targets["broker"]["url"] == "http://127.0.0.1:8080/metrics"
    assert {kinds[name] for name in values.served() if name in kinds} == {"function"}
    # Test subscribers (tests/e2e/subscribers.py) answer /metrics with JSON: not scraped.
    assert not [name for name in targets if name.startswith("e2e-")]
    assert set(values.served()) - set(targets) == {
        n for n in values.served() if n.startswith("e2e-")
    }
    # Sources with OBJECTFLOW_METRICS_PORT: the relay's local-port, mongo-outbox's env.
    assert targets["ota-outbox-relay"] == {"url": "http://127.0.0.1:8093/metrics", "kind": "source"}
    assert targets["mongo-outbox"] == {"url": "http://127.0.0.1:8094/metrics", "kind": "source"}
    # The bridge, each Kafka source and the ticker: a port derived from the process's name.
    derived = values.source_metrics_ports()
    assert {
        "mqtt-bridge",
        "cron-ticker",
        *(f"kafka-source-{k}" for k in values.sources.kafka),
    } == set(derived)
    for name, port in derived.items():
        assert targets[name] == {"url": f"http://127.0.0.1:{port}/metrics", "kind": "source"}
    served = {p for ports in values.process_ports().values() for p in ports}
    assert len(set(derived.values())) == len(derived) and not served & set(derived.values())


def test_scrape_config_has_a_job_per_kind_and_a_component_label_per_target() -> None:
    targets = {
        "broker": {"url": "http://127.0.0.1:8080/metrics", "kind": "broker"},
        "echo": {"url": "http://127.0.0.1:10450/metrics", "kind": "function"},
        "echo.2": {"url": "http://127.0.0.1:10451/metrics", "kind": "function"},
        "ota-outbox-relay": {"url": "http://127.0.0.1:8093/metrics", "kind": "source"},
    }
    config = prometheus.config(targets, "2s")
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s"}
    assert config["rule_files"] == [str(prometheus.RULES)]
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    # ObjectflowTargetDown watches the jobs whose name contains "objectflow".
    assert all("objectflow" in job for job in jobs)
    assert jobs["objectflow-functions"] == [
        {"targets": ["127.0.0.1:10450"], "labels": {"component": "echo"}},
        {"targets": ["127.0.0.1:10451"], "labels": {"component": "echo.2"}},
    ]
    assert jobs["objectflow-broker"] == [
        {"targets": ["127.0.0.1:8080"], "labels": {"component": "broker"}}
    ]
    assert jobs["objectflow-sources"] == [
        {"targets": ["127.0.0.1:8093"], "labels": {"component": "ota-outbox-relay"}}
    ]
