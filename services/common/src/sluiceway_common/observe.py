"""Watching a running component: Prometheus metrics and health probes on one HTTP port.

Each long-running process (the fetcher, the writer; the operator can do the same) has one
:class:`Observer`, started at ``SLUICEWAY_METRICS_PORT`` (0: nothing is served, the metrics
are still kept). It answers three paths:

* ``/metrics``: its :attr:`Observer.registry` in the Prometheus text format (OpenMetrics when
  the scraper asks for it). A component registers its metrics there, either native
  ``prometheus_client`` metrics (histograms, observed as things happen) or, for counts it
  already keeps as plain attributes, a :class:`Readings` read at each scrape, so that no count
  is kept twice. Names start with ``sluiceway_``; every series has a ``pipeline`` label, and
  no label ever holds a key, a URL or anything else that is not from a short fixed list.
* ``/healthz``: 200 while the event loop turns. A heartbeat task ticks every ``heartbeat``
  seconds; when its last tick is older than ``stall`` seconds, or came that much later than
  asked (the loop was blocked in between), the answer is 503. A loop blocked for good does not
  answer at all, which the probe's own timeout counts as a failure.
* ``/readyz``: runs every check added with :meth:`Observer.add_check` at once, each within
  ``check_timeout`` seconds. 200 with ``{"ready": true, "checks": {"<name>": "ok", …}}`` when
  all pass; otherwise 503 with each failing check's reason in place of ``"ok"``, passed through
  :func:`sluiceway_common.logs.redact`. Before the first check is added it answers 503
  ``"starting"``.

The operator can serve its own metrics and checks the same way::

    async with Observer(port) as observer:
        SCALE_EVENTS = Counter("sluiceway_scale_events", "…", ["pipeline"],
                               registry=observer.registry)
        observer.add_check("kubernetes", ping_the_api)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from sluiceway_common.lifecycle import StartupError
from sluiceway_common.logs import error_text, redact

Check = Callable[[], Awaitable[object]]
"""A readiness check: it passes by returning, fails by raising (the exception is the reason)."""


class Observer:
    """The process's metrics registry and its one HTTP server for ``/metrics``, ``/healthz``
    and ``/readyz``; an async context manager (or :meth:`start` and :meth:`close`)."""

    def __init__(
        self,
        port: int,
        *,
        host: str | None = None,
        heartbeat: float = 1.0,
        stall: float = 10.0,
        check_timeout: float = 2.0,
    ) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, … (Linux only).
        ProcessCollector(registry=self.registry)
        self._port = port
        self._host = host  # None: every interface
        self._heartbeat = heartbeat
        self._stall = stall
        self._check_timeout = check_timeout
        self._checks: dict[str, Check] = {}
        self._last_tick = time.monotonic()
        self._last_lag = 0.0
        self._ticking: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port served, once started (0: not serving)."""
        return self._port

    def add_check(self, name: str, check: Check) -> None:
        """Make ``/readyz`` depend on ``check`` too (a name says what it reaches, e.g.
        ``rabbitmq``); adding a check under a name already used replaces it."""
        self._checks[name] = check

    async def start(self) -> None:
        """Start the heartbeat and, unless the port is 0, serve; a port that cannot be bound
        raises :class:`StartupError`."""
        self._last_tick = time.monotonic()
        self._ticking = asyncio.create_task(self._tick())
        if self._port == 0:
            return
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self.close()
            raise StartupError(
                f"cannot serve metrics on port {self._port} (SLUICEWAY_METRICS_PORT): {exc}"
            ) from exc

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
            self._ticking = None

    async def __aenter__(self) -> Observer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _tick(self) -> None:
        while True:
            asked = time.monotonic() + self._heartbeat
            await asyncio.sleep(self._heartbeat)
            self._last_tick = time.monotonic()
            self._last_lag = self._last_tick - asked

    def stalled(self) -> float:
        """How long the event loop was last seen stuck, in seconds (0 when it turns)."""
        since = time.monotonic() - self._last_tick - self._heartbeat
        stuck = max(since, self._last_lag)
        return stuck if stuck > self._stall else 0.0

    async def _healthz(self, _: web.Request) -> web.Response:
        stuck = self.stalled()
        if stuck:
            return _json(503, {"alive": False, "reason": f"event loop stalled for {stuck:.1f}s"})
        return _json(200, {"alive": True})

    async def readiness(self) -> dict[str, str]:
        """Each check's name and ``"ok"`` or the (redacted) reason it failed."""
        names = list(self._checks)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._checks[name](), self._check_timeout) for name in names),
            return_exceptions=True,
        )
        return {name: _reason(result) for name, result in zip(names, results, strict=True)}

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self._checks:
            return _json(503, {"ready": False, "checks": {}, "reason": "starting"})
        checks = await self.readiness()
        ready = all(result == "ok" for result in checks.values())
        return _json(200 if ready else 503, {"ready": ready, "checks": checks})


def _reason(result: object) -> str:
    if isinstance(result, TimeoutError):
        return "timed out"
    if isinstance(result, BaseException):
        return redact(error_text(result))[:300]
    return "ok"


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


# --- metrics ---------------------------------------------------------------------------------

Values = Callable[[], Mapping[tuple[str, ...], float]]


class Readings:
    """Counters and gauges whose values a component already keeps, read at each scrape.

    Each metric gets a ``pipeline`` label, then the labels it names; ``read`` returns the
    value for each combination of those labels' values, or one number when it has none.
    Counter names are given without ``_total``: the exposition adds it."""

    def __init__(self, registry: CollectorRegistry, pipeline: str) -> None:
        self._pipeline = pipeline
        self._metrics: list[tuple[bool, str, str, tuple[str, ...], Values]] = []
        registry.register(self)

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._metrics.append((True, name, doc, (), lambda: {(): read()}))

    def counters(self, name: str, doc: str, labels: Sequence[str], read: Values) -> None:
        self._metrics.append((True, name, doc, tuple(labels), read))

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._metrics.append((False, name, doc, (), lambda: {(): read()}))

    def collect(self) -> Iterator[Metric]:
        for is_counter, name, doc, labels, read in self._metrics:
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily if is_counter else GaugeMetricFamily
            )(name, doc, labels=("pipeline", *labels))
            for values, value in sorted(read().items()):
                family.add_metric([self._pipeline, *values], value)
            yield family


def histogram(
    registry: CollectorRegistry, pipeline: str, name: str, doc: str, buckets: Sequence[float]
) -> Histogram:
    """A histogram of ``pipeline`` (its labelled child, ready to ``observe``)."""
    return Histogram(name, doc, ["pipeline"], registry=registry, buckets=buckets).labels(pipeline)
