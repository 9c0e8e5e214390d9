"""ota-reports — reports (CSV, PDF, JSON) and the operator dashboard over HTTP, kept up to date
by job.completed and rollout.* events (docs/ota.md, "Reports" and "Dashboard").

One function, two faces, as the dead-letter sink does: it is an HTTP function (kind http), and
its trigger delivers CloudEvents to `POST /` like to any subscriber; that route validates them
against the catalog and applies them (functions/ota/reports.py), so one Service serves the
tables it keeps.

POST /                                  a CloudEvent: job.completed or rollout.* (204)
GET  /reports/jobs.csv?from=&to=&firmware=&status=&rollout_id=   streamed CSV (RFC 4180)
GET  /reports/rollouts/<id>.pdf         the rollout's PDF (cached)
GET  /reports/summary?from=&to=&firmware=   daily counts by firmware and model (cached JSON)
GET  /, /rollouts/<id>, /jobs/<id>      the dashboard (functions/ota/dashboard.py)
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import UTC, date, datetime, time
from typing import Annotated

from fastapi import Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import Request

from functions.ota import dashboard, firmwares, jobs, report_pdf, reports
from functions.ota.events import ROLLOUT_KINDS, JobEvent, RolloutEvent
from functions.ota.events import cloudevent_type as ce_type
from functions.runtime import InvalidData, NotFound, clients, http_function
from functions.runtime import logging as objectflow_logging
from functions.runtime.adapter import validate
from functions.runtime.http import read_cloudevent
from functions.runtime.metrics import EVENTS

NAME = "ota-reports"
ACCEPTS = (ce_type("job.completed"), *(ce_type(kind) for kind in ROLLOUT_KINDS))
log = logging.getLogger("objectflow.ota.reports")

api = http_function(NAME, summary="OTA reports and the operator dashboard")
api.include_router(dashboard.router)


# --- events ---------------------------------------------------------------------------------


@api.post("/", status_code=204, include_in_schema=False)
async def receive(request: Request) -> Response:
    """One job.completed or rollout.* CloudEvent from the trigger; 204 once applied (or found
    applied already). Bad events are refused with 400/415/422 and change nothing."""
    ce = await read_cloudevent(request)
    event = validate(ce, ACCEPTS, ce.get("traceparent"))
    with objectflow_logging.event_context(event_id=event.id, event_type=event.type,
                                          event_source=event.source):  # fmt: skip
        applied = await run_in_threadpool(apply, event.data)
        log.info("event applied" if applied else "event applied before: nothing counted")
    EVENTS.labels(NAME, event.type, "ok" if applied else "duplicate").inc()
    return Response(status_code=204)


def apply(data: JobEvent | RolloutEvent) -> bool:
    """Apply the event in one transaction, then make every cached report stale (also on a
    replay: a redelivery after the commit but before the bump must still bump)."""
    if isinstance(data, JobEvent):
        applied = clients.postgres.transaction(lambda cur: reports.apply_completed(cur, data))
    else:
        applied = clients.postgres.transaction(lambda cur: reports.apply_rollout(cur, data))
    reports.bump_generation()
    return applied


# --- the reports ----------------------------------------------------------------------------


FROM = Query(alias="from", description="ISO date or date-time (UTC if no zone)")
TO = Query(alias="to", description="ISO date or date-time, exclusive")


def _moment(value: str | None, field: str) -> datetime | None:
    """A query's date (midnight UTC) or date-time (UTC unless it names its offset)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidData(f"{field}: not an ISO 8601 date or date-time: {value!r}",
                          field=field) from None  # fmt: skip
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    first, last = _moment(start, "from"), _moment(end, "to")
    if first and last and last < first:
        raise InvalidData("to: before from", field="to")
    return first, last


@api.get(
    "/reports/jobs.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per job (RFC 4180)"}},
)
async def jobs_csv(
    start: Annotated[str | None, FROM] = None,
    end: Annotated[str | None, TO] = None,
    firmware: Annotated[str | None, Query(pattern=firmwares.VERSION)] = None,
    status: Annotated[jobs.Status | None, Query(description="The job's current status")] = None,
    rollout_id: Annotated[str | None, Query(description="Only this rollout's jobs")] = None,
) -> StreamingResponse:
    """Jobs created in [from, to), in creation order, streamed through a server-side cursor:
    header row, then `job_id,device_id,firmware_version,rollout_id,status,created_at,
    dispatched_at,finished_at,duration_s,model,retries,status_reason` (durations: dispatch to
    finish, in seconds)."""
    first, last = _range(start, end)
    if rollout_id is not None and not jobs._is_uuid(rollout_id):
        raise InvalidData(f"rollout_id: not a UUID: {rollout_id!r}", field="rollout_id")
    where = reports.JobFilter(first, last, firmware, status, rollout_id)
    lines = reports.job_csv(where)
    # Read the header and first batch before answering: an outage or a timeout is then a
    # 503 instead of a 200 whose body stops short.
    head = await run_in_threadpool(next, lines)
    return StreamingResponse(
        itertools.chain([head], lines),
        media_type="text/csv; charset=utf-8; header=present",
        headers={"Content-Disposition": 'attachment; filename="jobs.csv"'},
    )


@api.get(
    "/reports/rollouts/{rollout_id}.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The rollout's report"}},
)
def rollout_pdf(rollout_id: str) -> Response:
    """The rollout's summary, per-wave counts, a chart of its jobs' final statuses over time
    and its timeline, as a PDF (cached until the next event)."""

    def build() -> bytes:
        with reports.analytical() as cur:
            report = reports.rollout_report(cur, rollout_id)
        if report is None:
            raise NotFound(f"no rollout {rollout_id}", field="rollout_id")
        return report_pdf.render(report)

    body = reports.cached("rollout-pdf", {"id": rollout_id}, build)
    return Response(body, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="rollout-{rollout_id}.pdf"'})  # fmt: skip


class Counts(BaseModel):
    finished: int
    succeeded: int = Field(description="done")
    failed: int = Field(description="error")
    timed_out: int
    success_percent: float | None
    mean_duration_s: float | None = Field(description="Dispatch to finish")
    max_duration_s: float


class FirmwareCounts(Counts):
    firmware_version: str


class ModelCounts(Counts):
    model: str


class DayCounts(Counts):
    day: date


class Summary(BaseModel):
    from_: date | None = Field(alias="from")
    to: date | None
    firmware: str | None
    totals: Counts
    by_firmware: list[FirmwareCounts]
    by_model: list[ModelCounts]
    by_day: list[DayCounts]


def _day(value: str | None, field: str) -> date | None:
    moment = _moment(value, field)
    if moment is None:
        return None
    if moment.timetz().replace(tzinfo=None) != time(0):
        raise InvalidData(f"{field}: the summary counts whole days; give a date", field=field)
    return moment.date()


@api.get("/reports/summary", response_model=Summary)
def summary(
    start: Annotated[str | None, FROM] = None,
    end: Annotated[str | None, TO] = None,
    firmware: Annotated[str | None, Query(pattern=firmwares.VERSION)] = None,
) -> Response:
    """Finished jobs (done, error, timed_out) and their durations per firmware, per device
    model and per UTC day in [from, to), from the tables the events keep (cached)."""
    first, last = _day(start, "from"), _day(end, "to")
    if first and last and last < first:
        raise InvalidData("to: before from", field="to")

    def build() -> bytes:
        with reports.analytical() as cur:
            found = reports.summary(cur, first, last, firmware)
        return json.dumps(found).encode()

    params = {"from": first, "to": last, "firmware": firmware}
    return Response(reports.cached("summary", params, build), media_type="application/json")


ota_reports = api.target
