"""The local broker: Knative Broker + Trigger semantics on one machine.

Ingress (POST /) takes binary or structured CloudEvents and answers 202 once the event is
recorded in the journal on local disk (`journal.py`; at-least-once, as Knative's Kafka broker),
400 with a reason when the request is not a CloudEvent, 503 when the journal cannot be written.
An event leaves the journal when every matching trigger has acked or dead-lettered it, and a
broker that starts resumes delivering whatever is still there. Each event goes, concurrently,
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
import contextlib
import logging
import os
import sqlite3
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
from devstack.runtime.journal import Journal
from functions.runtime import cehttp, tracing
from functions.sources.sink import retryable_status

log = logging.getLogger("objectflow.broker")
Wire = tuple[dict[str, str], bytes]  # an event serialised once, in binary mode
HOST = "127.0.0.1"
MATCH_CACHE = 4096  # distinct filtered-attribute combinations remembered

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
    url: str  # the function's (first) process
    delivery: wiring.Delivery
    processes: tuple[str, ...] = ()  # every process's URL when `scale` runs several
    concurrency: int = 0  # deliveries one process gets at once; 0: unlimited


def routes(values: wiring.Values) -> list[Route]:
    """The routing table the local runtime derives from the diagram (schedule triggers spelt
    out as their ping filter in values' `namespace`)."""
    ports = values.process_ports()
    table = []
    for name, trigger in values.routed_triggers():
        urls = tuple(f"http://{HOST}:{port}/" for port in ports[name])
        scale = values.functions[name].scale
        delivery = values.delivery_for(trigger)
        table.append(Route(trigger, name, urls[0], delivery, urls, scale.concurrency or 0))
    return table


class Processes:
    """The processes of one function, as Knative's activator sees a Service's pods: a delivery
    waits until a process is ready (answered GET /health; the broker may start before the
    functions do) and goes to the least busy one, round-robin among equals, at most
    `concurrency` at once per process."""

    def __init__(self, urls: tuple[str, ...], concurrency: int) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.busy = dict.fromkeys(urls, 0)
        self._ready: dict[str, asyncio.Event] = {url: asyncio.Event() for url in urls}
        self._probing: set[str] = set()
        self._probes: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Condition()
        self._waiting = 0  # deliveries in `acquire`'s slow path
        self._next = 0

    def _pick(self, session: aiohttp.ClientSession, anyone: bool = False) -> str | None:
        """The least busy ready process with room (round-robin among equals), if any;
        `anyone`: the least busy of all, ready or not."""
        room = []
        for url in self.urls:
            if not self._ready[url].is_set():
                self._probe(session, url)
            elif not self.concurrency or self.busy[url] < self.concurrency:
                room.append(url)
        candidates = room or (list(self.urls) if anyone else [])
        if not candidates:
            return None
        start = self._next % len(candidates)
        self._next += 1
        url = min(candidates[start:] + candidates[:start], key=self.busy.__getitem__)
        self.busy[url] += 1
        return url

    async def acquire(self, session: aiohttp.ClientSession, within: float) -> str:
        """A ready process with room (waiting up to `within` s for one; then any process)."""
        url = self._pick(session)  # the common case: no lock, no wait
        if url is not None:
            return url
        deadline = time.monotonic() + within
        self._waiting += 1
        try:
            async with self._freed:
                while (left := deadline - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._freed.wait(), min(left, 0.1))
                    url = self._pick(session)
                    if url is not None:
                        return url
        finally:
            self._waiting -= 1
        url = self._pick(session, anyone=True)
        assert url is not None
        return url

    async def release(self, url: str, reachable: bool) -> None:
        self.busy[url] -= 1
        if not reachable:  # restarting, say: wait for its /health again
            self._ready[url].clear()
        if self._waiting:
            async with self._freed:
                self._freed.notify_all()

    def _probe(self, session: aiohttp.ClientSession, url: str) -> None:
        if url in self._probing:
            return
        self._probing.add(url)

        async def probe() -> None:
            try:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        timeout = aiohttp.ClientTimeout(total=1)
                        async with session.get(f"{url}health", timeout=timeout) as answer:
                            if answer.status < 500:
                                break
                    await asyncio.sleep(0.2)
                self._ready[url].set()
                async with self._freed:
                    self._freed.notify_all()
            finally:
                self._probing.discard(url)

        task = asyncio.get_running_loop().create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)


@dataclass
class Attempt:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive from aiohttp
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


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


@dataclass(frozen=True)
class _Meters:
    """One trigger's metric children, looked up once (`labels()` costs a lock and a dict)."""

    ok: Counter
    retry: Counter
    latency: Histogram

    @classmethod
    def of(cls, trigger: str) -> _Meters:
        return cls(
            DELIVERIES.labels(trigger, "ok"),
            DELIVERIES.labels(trigger, "retry"),
            LATENCY.labels(trigger),
        )


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
        journal: Journal | None = None,
        broker_class: wiring.BrokerClass = "MTChannelBasedBroker",
    ) -> None:
        self.table = list(table)
        self.rules = knative.Rules(broker_class)
        self.dead_letter_url = dead_letter_url
        self.journal = journal  # None: in memory only (unit tests)
        self._sleep = sleep  # the waits between retries go through it (tests record them)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordered = _SubjectLocks()
        self._processes: dict[str, Processes] = {}  # per function
        self._meters = {route.trigger.name: _Meters.of(route.trigger.name) for route in self.table}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # Matching depends only on the attributes the filters name: remember it per their values
        # (the type, source, subject... of a stream of events repeat; the id does not).
        self._filtered = sorted({n for route in self.table for n in _names(route.trigger.filters)})
        self._matches: dict[tuple[str | None, ...], list[Route]] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
            # No cookie jar and no decompression: a broker carries neither, and both cost
            # every request a pass over its headers.
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self.journal is not None:
            await self.journal.close()

    def resume(self) -> int:
        """Start delivering what the journal holds from an earlier run, oldest first (so the
        order per ordered key holds); return how many events that is."""
        if self.journal is None:
            return 0
        by_trigger = {route.trigger.name: route for route in self.table}
        pending = self.journal.resume()
        for entry in pending:
            event = cehttp.decode(*entry.wire, raw_data=True)
            for name in entry.triggers:
                route = by_trigger.get(name)
                if route is None:
                    log.warning("trigger gone from the values; dropping its pending delivery",
                                extra={"trigger": name, "event_id": event["id"]})  # fmt: skip
                    self.journal.done(entry.seq, name)
                    continue
                self._start(route, event, entry.wire, entry.seq)
        return len(pending)

    async def ingest(self, event: CloudEvent) -> int:
        """Record `event` and deliver it to every matching trigger; return how many matched.

        Returns once the record is on disk; delivery starts at once, beside the fsync."""
        self.rules.arrived(event)
        if self.rules.expired(event):
            INGRESS.labels("ttl-expired").inc()
            log.info("dropping an event without TTL left", extra={"event_id": event["id"]})
            return 0
        attributes = event.get_attributes()
        matched = self._matching(attributes)
        if not matched:
            log.info("no trigger matches", extra={"event_id": event["id"], "type": event["type"]})
            return 0
        # serialised once, sent to every matching trigger; a binary-mode body as it came
        data = event.get_data()
        if data is None or isinstance(data, bytes):
            wire = cehttp.encode_attributes(self.rules.subscriber_attributes(attributes), data)
        else:  # structured mode: the SDK serialises the parsed data
            wire = cehttp.encode(self.rules.for_subscriber(event))
        seq, recorded = None, None
        if self.journal is not None:
            seq, recorded = self.journal.append(wire, [route.trigger.name for route in matched])
        for route in matched:
            self._start(route, event, wire, seq)
        if recorded is not None:
            await recorded
        return len(matched)

    def _matching(self, attributes: Mapping[str, Any]) -> list[Route]:
        """The routes whose trigger's filters match `attributes`."""
        key = tuple(None if (v := attributes.get(n)) is None else str(v) for n in self._filtered)
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) >= MATCH_CACHE:
                self._matches.clear()
            found = [route for route in self.table if route.trigger.matches(attributes)]
            self._matches[key] = found
        return found

    def _start(self, route: Route, event: CloudEvent, wire: Wire, seq: int | None) -> None:
        delivery = self._deliver(route, event, wire, time.perf_counter(), seq)
        task = asyncio.get_running_loop().create_task(delivery)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, route: Route, event: CloudEvent, wire: Wire, received: float, seq: int | None
    ) -> None:
        # Ordered triggers serialise per partition key only, as the Kafka broker partitions by
        # `partitionkey` (PartitionKeyExtensionInterceptor); events without one go at once.
        key = event.get("partitionkey")
        if route.trigger.ordered and key is not None:
            async with self._ordered.hold((route.trigger.name, str(key))):
                settled = await self._deliver_now(route, event, wire, received)
        else:
            settled = await self._deliver_now(route, event, wire, received)
        if settled and seq is not None and self.journal is not None:
            self.journal.done(seq, route.trigger.name)

    async def _deliver_now(
        self, route: Route, event: CloudEvent, wire: Wire, received: float
    ) -> bool:
        """Deliver with retries, then dead-letter; False if even the dead-letter sink could not
        take it (the event then stays in the journal for the next start)."""
        if not tracing.enabled():  # the hot path pays nothing for tracing while it is off
            return await self._deliver_with_retries(route, event, wire, received)
        with tracing.span(
            f"broker {route.trigger.name}",
            kind=tracing.Kind.PRODUCER,
            parent=event.get("traceparent"),
            attributes={"cloudevents.event_id": event["id"], "trigger": route.trigger.name},
        ):
            return await self._deliver_with_retries(route, event, _retraced(wire), received)

    async def _deliver_with_retries(
        self, route: Route, event: CloudEvent, wire: Wire, received: float
    ) -> bool:
        name = route.trigger.name
        meters = self._meters[name]
        first_attempt = time.time()
        timeout = route.delivery.timeout_seconds
        result = self._judged(await self._post(route, wire, timeout))
        attempts = 1
        if not result.ok and result.retryable and route.delivery.retry > 0:
            # Only a failed first attempt pays for a retry loop; tenacity replays that attempt
            # as its first, so its backoff then counts from there.
            made = [result]

            async def attempt() -> Attempt:
                nonlocal attempts
                if made:
                    return made.pop()
                meters.retry.inc()
                attempts += 1
                return self._judged(await self._post(route, wire, timeout))

            result = await tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(route.delivery.retry + 1),
                wait=Backoff(route.delivery, self.rules.broker_class),
                sleep=self._sleep,
                retry=tenacity.retry_if_result(lambda a: not a.ok and a.retryable),
                retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            )(attempt)
        meters.latency.observe(time.perf_counter() - received)
        if result.ok:
            meters.ok.inc()
            if result.reply is not None:
                # recorded before the original counts as done
                await self.ingest(self.rules.reply_to(result.reply, event))
            return True
        log.warning(
            "delivery failed, dead-lettering",
            extra={"trigger": name, "event_id": event["id"], "status": result.status,
                   "attempts": attempts, "error": result.error},
        )  # fmt: skip
        if not route.delivery.dead_letter or self.dead_letter_url is None:
            DELIVERIES.labels(name, "dropped").inc()
            return True
        return await self._dead_letter(route, event, result, attempts, first_attempt)

    async def _post(self, route: Route, wire: Wire, timeout: float) -> Attempt:
        """One delivery attempt to the function of `route`, at one of its processes."""
        if not route.processes:  # a bare route (unit tests): no readiness, no balancing
            return await self._send(route.url, wire, timeout)
        processes = self._processes.get(route.function)
        if processes is None:
            processes = Processes(route.processes, route.concurrency)
            self._processes[route.function] = processes
        url = await processes.acquire(self.session, within=timeout)
        result = Attempt(status=None)
        try:
            result = await self._send(url, wire, timeout)
        finally:
            await processes.release(url, reachable=result.status is not None)
        return result

    async def _send(self, url: str, wire: Wire, timeout: float) -> Attempt:
        headers, body = wire
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                timeout=client_timeout,
                # aiohttp would label a body without a content type octet-stream, which binary
                # mode reads as the event's datacontenttype.
                skip_auto_headers=() if "content-type" in headers else ("Content-Type",),
            ) as response:
                return Attempt(response.status, await response.read(), response.headers)
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
        self, route: Route, event: CloudEvent, result: Attempt, attempts: int, first: float
    ) -> bool:
        bare = result.invalid_reply or (result.timed_out and self.rules.mt)
        attributes = {
            **self.rules.for_subscriber(event).get_attributes(),
            **self.rules.error_extensions(
                route.url, result.status, result.body, result.error, bare=bare
            ),
            "objectflowattempts": str(attempts),
            "objectflowtrigger": route.trigger.name,
            "objectflowfirstattempt": _iso(first),
            "objectflowlastattempt": _iso(time.time()),
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
            return True
        DELIVERIES.labels(route.trigger.name, "dropped").inc()
        log.error(
            "dead-letter sink unavailable; the event stays in the journal until the next start",
            extra={"trigger": route.trigger.name, "event_id": event["id"]},
        )
        return False

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
        try:
            await self.ingest(event)
        except sqlite3.Error as exc:
            INGRESS.labels("unavailable").inc()
            log.error("journal write failed", extra={"error": str(exc)})
            reason = {"error": "journal-unavailable", "detail": f"event not recorded: {exc}"}
            return web.json_response(reason, status=503, headers={"Retry-After": "1"})
        INGRESS.labels("accepted").inc()
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
        pending = self.journal.pending if self.journal is not None else 0
        return web.json_response(
            {"status": "ok", "routes": len(self.table), "pending": pending, "pid": os.getpid()}
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _routes(self, _request: web.Request) -> web.Response:
        return web.json_response([describe(route) for route in self.table])


def _names(filters: Iterable[wiring.Filter]) -> set[str]:
    """The CloudEvent attributes `filters` look at (nested ones included)."""
    names: set[str] = set()
    for f in filters:
        names |= {*(f.exact or {}), *(f.prefix or {}), *(f.suffix or {})}
        names |= _names([*(f.all or []), *(f.any or []), *([f.not_] if f.not_ else [])])
    return names


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


def _retraced(wire: Wire) -> Wire:
    """`wire` naming the current span as the subscriber's parent: binary mode's ce-traceparent
    (a structured body keeps the sender's, which is of the same trace)."""
    headers, body = wire
    if "ce-traceparent" not in headers:
        return wire
    return {**headers, "ce-traceparent": tracing.traceparent() or ""}, body


class InvalidReply(Exception):
    """A 2xx response body that is no CloudEvent."""


def _reply(result: Attempt) -> CloudEvent | None:
    """The reply CloudEvent in a 2xx response; None for an empty body (a plain ack)."""
    if not result.body and not any(k.lower() == "ce-specversion" for k in result.headers):
        return None  # a plain ack, the common case
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
