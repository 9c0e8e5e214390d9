"""The jobs state machine's table, the per-state deadlines and the command's identity."""

from __future__ import annotations

import os

import pytest

from functions.ota import command, jobs
from functions.ota import settings as ota_settings
from functions.runtime import settings

DEVICE_ORDER = ["dispatched", "downloading", "flashing", "done"]


def test_every_state_has_a_row_and_every_target_is_a_state() -> None:
    assert set(jobs.TRANSITIONS) == set(jobs.STATES)
    assert all(targets <= set(jobs.STATES) for targets in jobs.TRANSITIONS.values())
    assert all(not jobs.TRANSITIONS[final] for final in jobs.FINAL)


def test_devices_only_move_a_job_forward() -> None:
    for i, earlier in enumerate(DEVICE_ORDER):
        for later in DEVICE_ORDER[i + 1 :]:
            assert jobs.allowed(earlier, later), (earlier, later)
            assert not jobs.allowed(later, earlier), (later, earlier)
    for state in jobs.WITH_DEADLINE:
        assert jobs.allowed(state, "error") and jobs.allowed(state, "timed_out")
        assert jobs.allowed(state, "ready")  # a re-dispatch by ota-deadlines
    assert not jobs.allowed("ready", "downloading")  # not before its command was sent
    assert not jobs.allowed("scheduled", "dispatched")


def test_only_the_device_states_have_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "OTA_TIMEOUT_FLASHING", "12.5")
    settings.reset()
    cfg = ota_settings.deadlines()
    assert cfg.timeout("flashing") == 12.5
    assert cfg.timeout("dispatched") == 600 and cfg.timeout("downloading") == 1800
    assert [s for s in jobs.STATES if cfg.timeout(s) is not None] == list(jobs.WITH_DEADLINE)
    settings.reset()


def test_a_command_id_names_one_readiness_of_one_job() -> None:
    assert command.message_id("j", 2) == command.message_id("j", 2)
    assert command.message_id("j", 2) != command.message_id("j", 4)
    assert command.topic("dev-1") == "commands/dev-1/ota"
