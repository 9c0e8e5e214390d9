"""The local broker: Knative Broker + Trigger semantics on one machine.

Ingress (POST /) takes binary or structured CloudEvents and answers 202 once the event is
routed, 400 with a reason when the request is not a CloudEvent. Each event goes, concurrently,
to every trigger whose filters match. A delivery is acknowledged by a 2xx with an empty body or
a reply CloudEvent (which re-enters the broker); 404, 408, 409, 429, 5xx and connection errors
are retried with the trigger's backoff, then dead-lettered; other 4xx go to the dead-letter
sink at once. Triggers marked `ordered` deliver one event at a time per `partitionkey`
extension; events without one are not held back. Where Knative's broker classes differ (a 2xx
whose body is no CloudEvent, backoff, limits, error extensions), values' `broker.class`
decides: devstack/runtime/knative.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
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
from devstack.runtime import knative
from functions.runtime import cehttp
from functions.sources.sink import retryable_status

log = logging.getLogger("objectflow.broker")
Wire = tuple[dict[str, str], bytes]  # an event serialised once, in binary mode
HOST = "127.0.0.1"

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
    timed_out: bool = False
    reply: CloudEvent | None = None
    invalid_reply: bool = False  # a 2xx whose body is no CloudEvent

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.invalid_reply

    @property
    def retryable(self) -> bool:
        """As both Knative brokers retry: no answer, 404, 408, 409, 429 and 5xx."""
        return self.status is None or retryable_status(self.status)


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
        broker_class: wiring.BrokerClass = "MTChannelBasedBroker",
    ) -> None:
        self.table = list(table)
        self.rules = knative.Rules(broker_class)
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
        self.rules.arrived(event)
        if self.rules.expired(event):
            INGRESS.labels("ttl-expired").inc()
            log.info("dropping an event without TTL left", extra={"event_id": event["id"]})
            return 0
        attributes = event.get_attributes()
        matched = [route for route in self.table if route.trigger.matches(attributes)]
        received = time.perf_counter()
        # serialised once, sent to every matching trigger
        wire = cehttp.encode(self.rules.for_subscriber(event))
        for route in matched:
            delivery = self._deliver(route, event, wire, received)
            task = asyncio.get_running_loop().create_task(delivery)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not matched:
            log.info("no trigger matches", extra={"event_id": event["id"], "type": event["type"]})
        return len(matched)

    async def _deliver(self, route: Route, event: CloudEvent, wire: Wire, received: float) -> None:
        # Ordered triggers serialise per partition key only, as the Kafka broker partitions by
        # `partitionkey` (PartitionKeyExtensionInterceptor); events without one go at once.
        key = event.get("partitionkey")
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
        result = self._judged(await self._send(route.url, wire, timeout))
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
                return self._judged(await self._send(route.url, wire, timeout))

            result = await tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(route.delivery.retry + 1),
                wait=Backoff(route.delivery, self.rules.broker_class),
                sleep=self._sleep,
                retry=tenacity.retry_if_result(lambda a: not a.ok and a.retryable),
                retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            )(attempt)
        LATENCY.labels(name).observe(time.perf_counter() - received)
        if result.ok:
            DELIVERIES.labels(name, "ok").inc()
            if result.reply is not None:
                self.ingest(self.rules.reply_to(result.reply, event))
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
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                # aiohttp would label a body without a content type octet-stream, which binary
                # mode reads as the event's datacontenttype.
                skip_auto_headers=() if "content-type" in headers else ("Content-Type",),
            ) as response:
                return Attempt(response.status, await response.read(), dict(response.headers))
        except TimeoutError as exc:
            return Attempt(status=None, error=f"timeout: {exc}", timed_out=True)
        except aiohttp.ClientError as exc:
            return Attempt(status=None, error=f"{type(exc).__name__}: {exc}")

    def _judged(self, result: Attempt) -> Attempt:
        """A subscriber's 2xx body must be empty (a plain ack) or a reply CloudEvent; anything
        else fails the delivery: as a 502 that is retried (MT), or at once (Kafka)."""
        if result.ok:
            try:
                result.reply = _reply(result)
            except InvalidReply as exc:
                log.warning("a 2xx whose body is no CloudEvent", extra={"error": str(exc)})
                result.invalid_reply, result.error = True, str(exc)
                if self.rules.retries_invalid_reply:
                    result.status = 502
        return result

    async def _dead_letter(
        self, route: Route, event: CloudEvent, result: Attempt, attempts: int, first: str
    ) -> None:
        bare = result.invalid_reply or (result.timed_out and self.rules.mt)
        attributes = {
            **self.rules.for_subscriber(event).get_attributes(),
            **self.rules.error_extensions(
                route.url, result.status, result.body, result.error, bare=bare
            ),
            "objectflowattempts": str(attempts),
            "objectflowtrigger": route.trigger.name,
            "objectflowfirstattempt": first,
            "objectflowlastattempt": _now(),
        }
        letter = cehttp.encode(CloudEvent(attributes, event.get_data()))
        # Knative delivers to the dead-letter sink with the trigger's own retry policy.
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(route.delivery.retry + 1),
            wait=Backoff(route.delivery, self.rules.broker_class),
            sleep=self._sleep,
            retry=tenacity.retry_if_result(lambda a: not a.ok and a.retryable),
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
        refused = self._refusal(request.headers, body)
        if refused is not None:
            INGRESS.labels("rejected").inc()
            return refused
        try:
            event = cehttp.decode(dict(request.headers), body, raw_data=True)
        except GenericException as exc:
            INGRESS.labels("rejected").inc()
            reason = {"error": "bad-event", "detail": f"not a valid CloudEvent: {exc}"}
            return web.json_response(reason, status=400)
        INGRESS.labels("accepted").inc()
        self.ingest(event)
        return web.Response(status=202)

    def _refusal(self, headers: Mapping[str, str], body: bytes) -> web.Response | None:
        """What Knative's ingress refuses before decoding: a request that is neither binary
        (`ce-specversion`) nor structured (`application/cloudevents*`) mode, whatever its JSON
        says (400, as the Go SDK), and an event above the class's size limit (the Kafka
        producer's max.request.size: 503)."""
        content_type = headers.get("content-type", "")
        if "ce-specversion" not in headers and not content_type.startswith(
            "application/cloudevents"
        ):
            reason = {
                "error": "bad-event",
                "detail": "not a valid CloudEvent: no ce-specversion header and the content type "
                f"{content_type or '(none)'!r} is not application/cloudevents+json",
            }
            return web.json_response(reason, status=400)
        limit = self.rules.max_event_bytes
        if limit is not None and len(body) > limit:
            broker = self.rules.broker_class
            detail = f"the event is {len(body)} bytes; the {broker} broker takes {limit}"
            return web.json_response({"error": "too-large", "detail": detail}, status=503)
        return None

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
    """`Delivery.delay` of the broker class (no jitter: neither Knative broker adds any).
    Tenacity's attempt 1 is the first delivery, so the wait after it is retry 1's."""

    def __init__(
        self, delivery: wiring.Delivery, broker_class: wiring.BrokerClass = "MTChannelBasedBroker"
    ) -> None:
        self.delivery = delivery
        self.broker_class = broker_class

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delivery.delay(retry_state.attempt_number, self.broker_class)


class InvalidReply(Exception):
    """A 2xx response body that is no CloudEvent."""


def _reply(result: Attempt) -> CloudEvent | None:
    """The reply CloudEvent in a 2xx response; None for an empty body (a plain ack)."""
    headers = {k.lower(): v for k, v in result.headers.items()}
    if "ce-specversion" not in headers and "cloudevents" not in headers.get("content-type", ""):
        if result.body:
            raise InvalidReply("a non-empty response that is no CloudEvent")
        return None
    try:
        return cehttp.decode(headers, result.body, raw_data=True)
    except GenericException as exc:
        raise InvalidReply(f"a malformed reply CloudEvent: {exc}") from None


async def serve(broker: Broker, port: int) -> web.AppRunner:
    runner = web.AppRunner(broker.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner
