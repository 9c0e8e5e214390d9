"""The local broker: Knative Broker + Trigger semantics on one machine.

Ingress (POST /) takes binary or structured CloudEvents and answers 202 once the event is
routed, 400 with a reason when the request is not a CloudEvent. Each event goes, concurrently,
to every trigger whose filters match. A delivery is acknowledged by 2xx (a reply CloudEvent in
the response re-enters the broker); 400/413/415/422 and other 4xx go to the dead-letter sink at
once; 408, 429, 5xx and connection errors are retried with the trigger's backoff plus jitter,
then dead-lettered. Triggers marked `ordered` deliver one event at a time per `partitionkey`
extension, or per `subject` when the event has none.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import tenacity
from aiohttp import web
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from devstack import wiring
from functions.runtime import cehttp

log = logging.getLogger("objectflow.broker")
Wire = tuple[dict[str, str], bytes]  # an event serialised once, in binary mode
HOST = "127.0.0.1"
ERROR_DATA_MAX = 1024  # Knative truncates knativeerrordata to 1 KiB

INGRESS = Counter("objectflow_broker_ingress_total", "Requests at the ingress.", ["outcome"])
DELIVERIES = Counter(
    "objectflow_broker_deliveries_total",
    "Delivery attempts per trigger and outcome (ok, retry, dead-lettered, dropped).",
    ["trigger", "outcome"],
)
LATENCY = Histogram(
    "objectflow_broker_delivery_seconds",
    "From ingress to the subscriber's final answer, per trigger.",
    ["trigger"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True)
class Route:
    """One trigger of one function: where matching events go and how."""

    trigger: wiring.Trigger
    function: str
    url: str
    delivery: wiring.Delivery


def routes(values: wiring.Values) -> list[Route]:
    """The routing table the local runtime derives from the diagram (schedule triggers spelt
    out as their ping filter in values' `namespace`)."""
    ports = values.function_ports()
    return [
        Route(trigger, name, f"http://{HOST}:{ports[name]}/", values.delivery_for(trigger))
        for name, trigger in values.routed_triggers()
    ]


@dataclass
class Attempt:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in (408, 429) or self.status >= 500


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _SubjectLocks:
    """FIFO locks per (trigger, subject), dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    def hold(self, key: tuple[str, str]) -> _Held:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        return _Held(self, key, lock)

    def release(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


@dataclass
class _Held:
    owner: _SubjectLocks
    key: tuple[str, str]
    lock: asyncio.Lock

    async def __aenter__(self) -> None:
        await self.lock.acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self.lock.release()
        self.owner.release(self.key)


class Broker:
    def __init__(
        self,
        table: Iterable[Route],
        dead_letter_url: str | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.table = list(table)
        self.dead_letter_url = dead_letter_url
        self._sleep = sleep  # the waits between retries go through it (tests record them)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordered = _SubjectLocks()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def ingest(self, event: CloudEvent) -> int:
        """Start delivering `event` to every matching trigger; return how many matched."""
        attributes = event.get_attributes()
        matched = [route for route in self.table if route.trigger.matches(attributes)]
        received = time.perf_counter()
        wire = cehttp.encode(event)  # serialised once, sent to every matching trigger
        for route in matched:
            delivery = self._deliver(route, event, wire, received)
            task = asyncio.get_running_loop().create_task(delivery)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not matched:
            log.info("no trigger matches", extra={"event_id": event["id"], "type": event["type"]})
        return len(matched)

    async def _deliver(self, route: Route, event: CloudEvent, wire: Wire, received: float) -> None:
        # Ordered triggers serialise per partition key (as the Kafka broker partitions by
        # `partitionkey`; KafkaSource sets it to the record key), else per subject.
        key = event.get("partitionkey") or event.get("subject")
        if route.trigger.ordered and key is not None:
            async with self._ordered.hold((route.trigger.name, str(key))):
                await self._deliver_now(route, event, wire, received)
        else:
            await self._deliver_now(route, event, wire, received)

    async def _deliver_now(
        self, route: Route, event: CloudEvent, wire: Wire, received: float
    ) -> None:
        name = route.trigger.name
        first_attempt = _now()
        timeout = route.delivery.timeout_seconds
        result = await self._send(route.url, wire, timeout)
        attempts = 1
        if not result.ok and result.retryable and route.delivery.retry > 0:
            # Only a failed first attempt pays for a retry loop; tenacity replays that attempt
            # as its first, so its backoff then counts from there.
            made = [result]

            async def attempt() -> Attempt:
                nonlocal attempts
                if made:
                    return made.pop()
                DELIVERIES.labels(name, "retry").inc()
                attempts += 1
                return await self._send(route.url, wire, timeout)

            result = await tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(route.delivery.retry + 1),
                wait=Backoff(route.delivery),
                sleep=self._sleep,
                retry=tenacity.retry_if_result(lambda a: not a.ok and a.retryable),
                retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            )(attempt)
        LATENCY.labels(name).observe(time.perf_counter() - received)
        if result.ok:
            DELIVERIES.labels(name, "ok").inc()
            reply = _reply(result)
            if reply is not None:
                self.ingest(reply)
            return
        log.warning(
            "delivery failed, dead-lettering",
            extra={"trigger": name, "event_id": event["id"], "status": result.status,
                   "attempts": attempts, "error": result.error},
        )  # fmt: skip
        if not route.delivery.dead_letter or self.dead_letter_url is None:
            DELIVERIES.labels(name, "dropped").inc()
            return
        await self._dead_letter(route, event, result, attempts, first_attempt)

    async def _send(self, url: str, wire: Wire, timeout: float) -> Attempt:
        headers, body = wire
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return Attempt(response.status, await response.read(), dict(response.headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Attempt(status=None, error=f"{type(exc).__name__}: {exc}")

    async def _dead_letter(
        self, route: Route, event: CloudEvent, result: Attempt, attempts: int, first: str
    ) -> None:
        body = result.body or result.error.encode()
        attributes = {
            **event.get_attributes(),
            "knativeerrordest": route.url,
            "knativeerrordata": base64.b64encode(body[:ERROR_DATA_MAX]).decode(),
            "objectflowattempts": str(attempts),
            "objectflowtrigger": route.trigger.name,
            "objectflowfirstattempt": first,
            "objectflowlastattempt": _now(),
        }
        if result.status is not None:
            attributes["knativeerrorcode"] = str(result.status)
        letter = cehttp.encode(CloudEvent(attributes, event.get_data()))
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(10),
            wait=tenacity.wait_exponential(multiplier=0.2, max=5),
            retry=tenacity.retry_if_result(lambda a: not a.ok),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        stored: Attempt | None = await retrying(
            self._send, str(self.dead_letter_url), letter, route.delivery.timeout_seconds
        )
        if stored is not None and stored.ok:
            DELIVERIES.labels(route.trigger.name, "dead-lettered").inc()
        else:
            DELIVERIES.labels(route.trigger.name, "dropped").inc()
            log.error(
                "dead-letter sink unavailable; event dropped",
                extra={"trigger": route.trigger.name, "event_id": event["id"]},
            )

    # --- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/", self._ingress)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/routes", self._routes)
        app.on_cleanup.append(lambda _app: self.close())
        return app

    async def _ingress(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = cehttp.decode(dict(request.headers), body)
        except GenericException as exc:
            INGRESS.labels("rejected").inc()
            reason = {"error": "bad-event", "detail": f"not a valid CloudEvent: {exc}"}
            return web.json_response(reason, status=400)
        INGRESS.labels("accepted").inc()
        self.ingest(event)
        return web.Response(status=202)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "routes": len(self.table)})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _routes(self, _request: web.Request) -> web.Response:
        return web.json_response([describe(route) for route in self.table])


def describe(route: Route) -> dict[str, Any]:
    """A route as plain data (GET /routes; compared with the chart by the parity test)."""
    return {
        "trigger": route.trigger.name,
        "function": route.function,
        "url": route.url,
        "filters": [f.model_dump(by_alias=True, exclude_none=True) for f in route.trigger.filters],
        "ordered": route.trigger.ordered,
        "delivery": route.delivery.model_dump(by_alias=True),
    }


class Backoff(tenacity.wait.wait_base):
    """`Delivery.delay` (Knative's linear or exponential backoff) plus up to half a base delay
    of jitter. Tenacity's attempt 1 is the first delivery, so the wait after it is retry 1's."""

    def __init__(self, delivery: wiring.Delivery, rng: random.Random | None = None) -> None:
        self.delivery = delivery
        self.rng = rng or random.Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        jitter = self.rng.uniform(0, self.delivery.backoff_seconds / 2)
        return self.delivery.delay(retry_state.attempt_number) + jitter


def _reply(result: Attempt) -> CloudEvent | None:
    """The reply CloudEvent in a 2xx response, if the subscriber sent one."""
    headers = {k.lower(): v for k, v in result.headers.items()}
    if "ce-specversion" not in headers and "cloudevents" not in headers.get("content-type", ""):
        return None
    try:
        return cehttp.decode(headers, result.body)
    except GenericException as exc:
        log.warning("ignoring a malformed reply", extra={"error": str(exc)})
        return None


async def serve(broker: Broker, port: int) -> web.AppRunner:
    runner = web.AppRunner(broker.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner
