"""The operator dashboard of ota-reports (docs/ota.md, "Dashboard"): server-rendered HTML
(Jinja2 templates in functions/ota/templates/), readable with JavaScript off.

GET  /                              rollouts, newest first, with per-wave progress bars
GET  /rollouts/<id>                 its waves, counts, failures, the pause/resume/cancel forms
POST /rollouts/<id>/<action>        form `version`: forwarded to ota-api with If-Match, then
                                    303 back to the rollout's page with what ota-api said
GET  /jobs/<id>                     a job and its status history (ota.job_events)

Pages refresh themselves every OTA_REPORTS_REFRESH_S seconds (`<meta http-equiv=refresh>`).
They read the primary (not the reports' replica): the version a form sends as If-Match must
be the rollout's latest, or ota-api answers 412.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote, urlencode

import requests
from fastapi import APIRouter, Form, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from functions.ota import jobs, rollouts
from functions.ota import settings as ota_settings
from functions.runtime import DependencyUnavailable, NotFound, clients

if TYPE_CHECKING:
    from psycopg2.extensions import cursor as Cursor

LISTED = 25  # rollouts on the front page
FAILED = ("error", "timed_out")
IN_FLIGHT = ("scheduled", "ready", "dispatched", "downloading", "flashing")
Action = Literal["pause", "resume", "cancel"]
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
router = APIRouter(include_in_schema=False)


def page(name: str, **context: Any) -> HTMLResponse:
    refresh = ota_settings.reports().refresh_s
    html = TEMPLATES.get_template(name).render(refresh=refresh, **context)
    return HTMLResponse(html)


def progress(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """Each wave's bar: finished of its devices, split into done and failed."""
    bars = []
    for n, wave in enumerate(rollout["waves"], start=1):
        counts, size = wave["counts"], len(wave["devices"])
        failed = sum(counts.get(s, 0) for s in FAILED)
        finished = counts.get("done", 0) + failed + counts.get("cancelled", 0)
        bars.append({"n": n, "percent": wave["percent"], "status": wave["status"], "size": size,
                     "done": counts.get("done", 0), "failed": failed, "finished": finished,
                     "in_flight": sum(counts.get(s, 0) for s in IN_FLIGHT),
                     "pending": counts.get("pending", 0), "counts": counts})  # fmt: skip
    return bars


def _listed(cur: Cursor) -> list[dict[str, Any]]:
    cur.execute("SELECT id::text FROM ota.rollouts ORDER BY created_at DESC LIMIT %s", (LISTED,))
    shown = [rollouts.get(cur, row[0]) for row in cur.fetchall()]
    return [r for r in shown if r is not None]


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    found = clients.postgres.transaction(_listed)
    return page("index.html", rollouts=[(r, progress(r)) for r in found])


def _rollout_page(cur: Cursor, rollout_id: str) -> dict[str, Any] | None:
    shown = rollouts.get(cur, rollout_id)
    if shown is None:
        return None
    cur.execute(
        """
        SELECT id::text, device_id, status, status_reason, retries, updated_at FROM ota.jobs
        WHERE rollout_id = %s AND status IN ('error', 'timed_out') ORDER BY updated_at, id
        LIMIT 200
        """,
        (rollout_id,),
    )
    failures = [
        {"id": i, "device_id": d, "status": s, "reason": r, "retries": n, "at": jobs.iso(at)}
        for i, d, s, r, n, at in cur.fetchall()
    ]
    return {"rollout": shown, "failures": failures}


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(
    rollout_id: str, notice: Annotated[str | None, Query(max_length=500)] = None
) -> HTMLResponse:
    found = clients.postgres.transaction(lambda cur: _rollout_page(cur, rollout_id))
    if found is None:
        raise NotFound(f"no rollout {rollout_id}", field="rollout_id")
    rollout = found["rollout"]
    return page("rollout.html", rollout=rollout, bars=progress(rollout),
                failures=found["failures"], notice=notice)  # fmt: skip


@router.post("/rollouts/{rollout_id}/{action}")
async def act(
    rollout_id: str, action: Action, version: Annotated[int, Form(ge=1)]
) -> RedirectResponse:
    """Forward the button to ota-api (POST /rollouts/<id>/<action>, If-Match: version); what
    it answered comes back as the page's notice."""
    if not jobs._is_uuid(rollout_id):
        raise NotFound(f"no rollout {rollout_id}", field="rollout_id")
    answer = await run_in_threadpool(forward, rollout_id, action, version)
    back = f"/rollouts/{quote(rollout_id)}?{urlencode({'notice': answer})}"
    return RedirectResponse(back, status_code=303)


def forward(rollout_id: str, action: str, version: int) -> str:
    url = f"{ota_settings.reports().api_url.rstrip('/')}/rollouts/{rollout_id}/{action}"
    try:
        answer = requests.post(url, headers={"If-Match": f'"{version}"'}, json={}, timeout=10)
    except requests.RequestException as exc:
        raise DependencyUnavailable("ota-api", f"{action}: {exc}") from exc
    if answer.status_code >= 500:
        raise DependencyUnavailable("ota-api", f"{action}: answered {answer.status_code}")
    if answer.ok:
        return f"{action}: done, the rollout is {answer.json()['status']}"
    try:
        detail = answer.json().get("detail", answer.text)
    except ValueError:
        detail = answer.text
    return f"{action} refused ({answer.status_code}): {detail}"[:480]


def _job_page(cur: Cursor, job_id: str) -> dict[str, Any] | None:
    job = jobs.get(cur, job_id)
    if job is None:
        return None
    cur.execute(
        "SELECT occurred_at, type, status, version, detail FROM ota.job_events "
        "WHERE job_id = %s ORDER BY id",
        (job_id,),
    )
    history = [
        {"at": jobs.iso(at), "type": kind, "status": status, "version": version, "detail": detail}
        for at, kind, status, version, detail in cur.fetchall()
    ]
    cur.execute("SELECT rollout_id::text FROM ota.jobs WHERE id = %s", (job_id,))
    row = cur.fetchone()
    return {"job": job.as_json(), "history": history, "rollout_id": row[0] if row else None}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> HTMLResponse:
    found = clients.postgres.transaction(lambda cur: _job_page(cur, job_id))
    if found is None:
        raise NotFound(f"no job {job_id}", field="job_id")
    return page("job.html", **found)
