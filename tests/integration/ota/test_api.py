"""ota-api against the real PostgreSQL and MinIO: every route, every bad input (a specific 4xx
that writes nothing), optimistic locking, and the outbox row of every change."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from functions.ota import signing
from tests.ota_support import outbox_rows, sql, unique
from tests.support import s3_client


def counts(env: dict[str, str], device_id: str) -> tuple[int, int, int]:
    """(jobs, job_events, outbox rows) of a device."""
    (row,) = sql(
        env,
        """
        SELECT (SELECT count(*) FROM ota.jobs WHERE device_id = %s),
               (SELECT count(*) FROM ota.job_events e JOIN ota.jobs j ON j.id = e.job_id
                WHERE j.device_id = %s),
               (SELECT count(*) FROM ota.event_outbox WHERE partition_key = %s)
        """,
        (device_id, device_id, device_id),
    )
    return row


# --- firmwares -------------------------------------------------------------------------------


def test_a_firmware_is_stored_with_its_digest_and_reuploads_are_judged_by_bytes(
    api: Any, ota_env: dict[str, str]
) -> None:
    version, body = unique("fw"), os.urandom(300_000)
    first = api.put(f"/firmwares/{version}", content=body)
    assert first.status_code == 201, first.text
    found = first.json()
    assert found["sha256"] == hashlib.sha256(body).hexdigest() and found["size"] == len(body)
    stored = s3_client(ota_env).get_object(Bucket="firmware", Key=found["key"])["Body"].read()
    assert stored == body

    assert api.put(f"/firmwares/{version}", content=body).status_code == 200
    other = api.put(f"/firmwares/{version}", content=b"other bytes")
    assert other.status_code == 409 and other.json()["error"] == "firmware-conflict"
    assert api.get(f"/firmwares/{version}").json() == found
    assert found in api.get("/firmwares").json()["firmwares"]
    (row,) = sql(ota_env, "SELECT sha256 FROM ota.firmwares WHERE version = %s", (version,))
    assert row[0] == found["sha256"]


def test_a_firmware_is_signed_with_the_stacks_key_and_a_provided_signature_is_checked(
    api: Any, ota_env: dict[str, str]
) -> None:
    key = signing.verifier()
    assert key is not None, "make up writes OTA_FIRMWARE_SIGNING_KEY into .devstack/env"
    assert api.get("/signing-key").json()["public_key"] == signing.public_pem()
    version, body = unique("fw"), os.urandom(5000)
    signed = api.put(f"/firmwares/{version}", content=body).json()
    assert signing.verifies(key, signed["signature"], body)
    (row,) = sql(ota_env, "SELECT signature FROM ota.firmwares WHERE version = %s", (version,))
    assert row[0] == signed["signature"]
    # uploaded before a key existed: the same bytes again sign it
    sql(ota_env, "UPDATE ota.firmwares SET signature = NULL WHERE version = %s", (version,))
    again = api.put(f"/firmwares/{version}", content=body)
    assert again.status_code == 200 and signing.verifies(key, again.json()["signature"], body)

    other = os.urandom(5000)  # a signature of other bytes, and one that is no signature
    for bad in (signed["signature"], "bm90IGEgc2lnbmF0dXJl"):
        version = unique("fw")
        refused = api.put(f"/firmwares/{version}", content=other,
                          headers={"x-firmware-signature": bad})  # fmt: skip
        assert refused.status_code == 422 and refused.json()["field"] == "x-firmware-signature"
        assert api.get(f"/firmwares/{version}").status_code == 404
        listed = s3_client(ota_env).list_objects_v2(Bucket="firmware", Prefix=f"{version}/")
        assert listed.get("KeyCount", 0) == 0
    version = unique("fw")
    kept = api.put(f"/firmwares/{version}", content=body,
                   headers={"x-firmware-signature": signed["signature"]})  # fmt: skip
    assert kept.status_code == 201 and kept.json()["signature"] == signed["signature"]


def test_a_multipart_upload_stores_only_the_file_part(api: Any) -> None:
    version, body = unique("fw"), os.urandom(5000)
    response = api.put(
        f"/firmwares/{version}", files={"file": ("fw.bin", body)}, data={"note": "x"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_an_oversize_firmware_is_refused_while_streaming_and_leaves_nothing(
    api: Any, ota_env: dict[str, str]
) -> None:
    os.environ["OTA_FIRMWARE_MAX_BYTES"] = "1000"
    from functions.runtime import settings

    settings.reset()
    version = unique("fw")

    def chunks() -> Any:  # no Content-Length: the limit must hold while streaming
        for _ in range(5):
            yield b"x" * 400

    response = api.put(f"/firmwares/{version}", content=chunks())
    assert response.status_code == 413 and response.json()["error"] == "payload-too-large"
    declared = api.put(f"/firmwares/{version}", content=b"x" * 1001)
    assert declared.status_code == 413
    assert api.get(f"/firmwares/{version}").status_code == 404
    listed = s3_client(ota_env).list_objects_v2(Bucket="firmware", Prefix=f"{version}/")
    assert listed.get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/firmwares/bad%20version", b"x", 422), ("/firmwares/fw-empty-x", b"", 422)],
)
def test_bad_firmware_uploads(api: Any, path: str, body: bytes, status: int) -> None:
    response = api.put(path, content=body)
    assert response.status_code == status, response.text
    assert api.get(path).status_code in (404, 422)


# --- devices ---------------------------------------------------------------------------------


def test_a_device_is_registered_then_updated(api: Any) -> None:
    device_id = unique("dev")
    created = api.put(f"/devices/{device_id}", json={"model": "a", "timezone": "Asia/Bangkok"})
    assert created.status_code == 201
    updated = api.put(f"/devices/{device_id}", json={"model": "b", "timezone": "UTC"})
    assert updated.status_code == 200
    assert api.get(f"/devices/{device_id}").json() == {
        "device_id": device_id,
        "model": "b",
        "timezone": "UTC",
        "current_firmware": None,
        "last_seen": None,
        "online": False,  # no telemetry yet
        "reported_firmware": None,
        "battery": None,
        "signal": None,
        "uptime_s": None,
    }


def test_a_device_with_an_unknown_zone_is_refused(api: Any) -> None:
    device_id = unique("dev")
    response = api.put(f"/devices/{device_id}", json={"model": "a", "timezone": "Mars/Olympus"})
    assert response.status_code == 422 and response.json()["field"] == "timezone"
    assert api.get(f"/devices/{device_id}").status_code == 404


# --- jobs ------------------------------------------------------------------------------------


def test_a_job_is_created_with_its_history_and_outbox_row_in_one_go(
    api: Any, ota_env: dict[str, str], device: Callable[..., str], firmware: str
) -> None:
    device_id = device()
    # Due in two hours: the running runtime's ota-scheduler would make a job due now `ready`
    # (a second version and outbox row) while this test reads it.
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0).isoformat()
    response = api.post(
        "/jobs",
        json={"device_id": device_id, "firmware_version": firmware, "schedule_time": later},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "scheduled" and job["version"] == 1
    assert job["schedule"]["kind"] == "at" and response.headers["etag"] == '"1"'
    assert api.get(f"/jobs/{job['id']}").json() == job
    ((kind, job_id, payload),) = outbox_rows(ota_env, [device_id])
    assert (kind, job_id) == ("job.created", job["id"])
    assert payload["event_id"] and payload["type"] == "job.created"
    assert payload["device_id"] == device_id and payload["version"] == 1
    assert counts(ota_env, device_id) == (1, 1, 1)


def test_timed_and_cron_jobs_get_their_due_times(
    api: Any, device: Callable[..., str], firmware: str
) -> None:
    device_id = device("Europe/Berlin")
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    timed = api.post(
        "/jobs",
        json={
            "device_id": device_id,
            "firmware_version": firmware,
            "schedule_time": at.isoformat(),
        },
    ).json()
    assert timed["schedule"]["kind"] == "at"
    assert datetime.fromisoformat(timed["due_at"]) == at
    cron = api.post(
        "/jobs", json={"device_id": device_id, "firmware_version": firmware, "cron": "30 4 * * *"}
    ).json()
    assert cron["schedule"] | {"due_at": None} == {
        "kind": "cron",
        "cron": "30 4 * * *",
        "timezone": "Europe/Berlin",
        "due_at": None,
    }
    local = datetime.fromisoformat(cron["due_at"]).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    assert (local.hour, local.minute) == (4, 30)


def test_a_mass_update_creates_one_job_per_device_in_one_transaction(
    api: Any, ota_env: dict[str, str], device: Callable[..., str], firmware: str
) -> None:
    devices = [device() for _ in range(3)]
    response = api.post("/jobs", json={"device_ids": devices, "firmware_version": firmware})
    assert response.status_code == 201, response.text
    assert sorted(j["device_id"] for j in response.json()["jobs"]) == sorted(devices)
    # one unknown device in the list: nothing at all is written
    others = [device(), device()]
    refused = api.post(
        "/jobs", json={"device_ids": [*others, unique("ghost")], "firmware_version": firmware}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "device_ids"
    assert all(counts(ota_env, d) == (0, 0, 0) for d in others)


BAD_JOBS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown device", {"device_id": "ghost-device-x"}, 422, "device_id"),
    ("unknown firmware", {"firmware_version": "no-such-fw"}, 422, "firmware_version"),
    ("bad cron", {"cron": "61 * * * *"}, 422, "cron"),
    ("six-field cron", {"cron": "0 0 * * * *"}, 422, "cron"),
    ("cron that never fires", {"cron": "0 0 31 2 *"}, 422, "cron"),
    ("unknown time zone", {"cron": "0 3 * * *", "timezone": "Nowhere/City"}, 422, "timezone"),
    ("past schedule", {"schedule_time": "2020-01-01T00:00:00+00:00"}, 422, "schedule_time"),
    ("no offset", {"schedule_time": "2999-01-01T00:00:00"}, 422, "schedule_time"),
    ("both kinds", {"cron": "0 3 * * *", "schedule_time": "2999-01-01T00:00:00Z"}, 422, ""),
    ("device_id and device_ids", {"device_ids": ["a"]}, 422, ""),
    ("unknown field", {"priority": 1}, 422, "priority"),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "field"), BAD_JOBS, ids=[b[0] for b in BAD_JOBS]
)
def test_bad_jobs_are_refused_and_write_nothing(
    api: Any,
    ota_env: dict[str, str],
    device: Callable[..., str],
    firmware: str,
    case: str,
    change: dict[str, Any],
    status: int,
    field: str,
) -> None:
    device_id = device()
    body = {"device_id": device_id, "firmware_version": firmware, **change}
    response = api.post("/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] and (not field or field in response.json()["field"])
    assert counts(ota_env, device_id) == (0, 0, 0)


def test_malformed_json_is_a_422_that_writes_nothing(api: Any, ota_env: dict[str, str]) -> None:
    before = sql(ota_env, "SELECT count(*) FROM ota.event_outbox")[0][0]
    response = api.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"] == "invalid-request"
    assert sql(ota_env, "SELECT count(*) FROM ota.event_outbox")[0][0] >= before  # others run


def _job(api: Any, device_id: str, firmware: str, **extra: Any) -> dict[str, Any]:
    response = api.post(
        "/jobs", json={"device_id": device_id, "firmware_version": firmware, **extra}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_patch_and_cancel_need_if_match_and_answer_the_new_version(
    api: Any, ota_env: dict[str, str], device: Callable[..., str], firmware: str
) -> None:
    device_id = device()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    job = _job(api, device_id, firmware, schedule_time=later)
    url = f"/jobs/{job['id']}"
    missing = api.patch(url, json={"cron": "0 5 * * *"})
    assert missing.status_code == 428 and missing.json()["field"] == "If-Match"
    assert api.post(f"{url}/cancel").status_code == 428
    stale = api.patch(url, json={"cron": "0 5 * * *"}, headers={"If-Match": '"7"'})
    assert stale.status_code == 412 and stale.json()["job"] == job
    assert api.patch(url, json={"cron": "0 5 * * *"}, headers={"If-Match": "x"}).status_code == 400
    assert counts(ota_env, device_id) == (1, 1, 1)

    patched = api.patch(url, json={"cron": "0 5 * * *"}, headers={"If-Match": '"1"'})
    assert patched.status_code == 200 and patched.headers["etag"] == '"2"'
    assert patched.json()["schedule"]["kind"] == "cron"
    cancelled = api.post(f"{url}/cancel", json={"reason": "recalled"}, headers={"If-Match": "2"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["status_reason"] == "recalled" and cancelled.headers["etag"] == '"3"'
    again = api.post(f"{url}/cancel", headers={"If-Match": "3"})
    assert again.status_code == 409
    assert api.patch(url, json={"cron": "0 6 * * *"}, headers={"If-Match": "3"}).status_code == 409
    kinds = [kind for kind, _, _ in outbox_rows(ota_env, [device_id])]
    assert kinds == ["job.created", "job.updated", "job.cancelled"]
    history = sql(
        ota_env,
        "SELECT type, version FROM ota.job_events WHERE job_id = %s ORDER BY id",
        (job["id"],),
    )
    assert history == [("job.created", 1), ("job.updated", 2), ("job.cancelled", 3)]


def test_an_empty_patch_and_unknown_jobs(
    api: Any, device: Callable[..., str], firmware: str
) -> None:
    job = _job(api, device(), firmware)
    assert api.patch(f"/jobs/{job['id']}", json={}, headers={"If-Match": "1"}).status_code == 422
    ghost = "00000000-0000-4000-8000-000000000000"
    assert api.get(f"/jobs/{ghost}").status_code == 404
    assert api.get("/jobs/not-a-uuid").status_code == 404
    assert (
        api.patch(
            f"/jobs/{ghost}", json={"cron": "0 1 * * *"}, headers={"If-Match": "1"}
        ).status_code
        == 404
    )


def test_twenty_concurrent_patches_one_wins(
    api: Any, ota_env: dict[str, str], device: Callable[..., str], firmware: str
) -> None:
    device_id = device()
    job = _job(api, device_id, firmware, cron="0 3 * * *")
    statuses: list[int] = []
    start = threading.Barrier(20)

    def patch(minute: int) -> None:
        start.wait()
        response = api.patch(
            f"/jobs/{job['id']}", json={"cron": f"{minute} 3 * * *"}, headers={"If-Match": '"1"'}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=patch, args=(m,)) for m in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * 19
    kinds = [kind for kind, _, _ in outbox_rows(ota_env, [device_id])]
    assert kinds == ["job.created", "job.updated"]


def test_jobs_are_listed_with_keyset_pagination_and_filters(
    api: Any, device: Callable[..., str], firmware: str
) -> None:
    device_id = device()
    made = [_job(api, device_id, firmware)["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"device_id": device_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    scheduled = api.get("/jobs", params={"device_id": device_id, "status": "cancelled"}).json()
    assert scheduled == {"jobs": [], "next_cursor": None}
    assert api.get("/jobs", params={"cursor": "garbage"}).status_code == 400
    assert api.get("/jobs", params={"status": "nope"}).status_code == 422
    assert api.get("/jobs", params={"limit": 0}).status_code == 422
