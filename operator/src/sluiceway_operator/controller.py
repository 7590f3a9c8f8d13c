"""One Pipeline's reconcile: children, writer scaling, rate limit, and the status they make.

Every ``pollIntervalSeconds`` (or at once when the Pipeline changes) :meth:`Controller.tick`
brings the cluster to what the Pipeline asks for and returns its new ``status``:

1. the ConfigMap, applied (as every child: only when its manifest changed, or every
   ``REAPPLY_SECONDS``: see :class:`~sluiceway_operator.kube.Applied`);
2. each feed's CronJob applied, those of feeds gone deleted, and ``status.feeds`` read back
   from the CronJobs and the runs' records in Redis (see :mod:`sluiceway_operator.feeds`);
3. the queues read once: the records queue's depth, and the fetch and delay queues' (the
   backlog) when the fetchers are scaled or a component may sleep; from them, how long every
   queue has been empty (``status.idleSince``), which puts components with ``minReplicas: 0``
   to sleep after ``idleSeconds``;
4. the writer Deployment, running the image last migrated (``status.writerImage``, see
   :mod:`sluiceway_operator.migration`; none yet: 0 writers), its replicas from the records
   queue's depth (see ``scaling``), unless the Pipeline is paused or the depth cannot be read
   (then they stay as they are, and ``queueDepth`` is unknown: null, not the last reading);
5. a new ``source.rateLimit`` written to Redis, which every running fetcher reads before its
   next request;
6. the fetcher Deployment: ``fetcher.replicas`` as given, or, with ``minReplicas`` and
   ``maxReplicas``, the fewest fetchers that spend the rate limit at the latency they report
   (``scaling.fetchers_wanted``), kept as they are while the Pipeline is paused or a metric
   cannot be read (the backlog from the broker; the reports and the limit from Redis);
7. the phase, message and conditions, the migration's included.

Every scale-down, writers' and fetchers', waits out its stabilization window and then steps
down as far as the component's ``scaleDownPolicies`` allow (``scaling.StepLimiter``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from sluiceway_common import settings, store, topology
from sluiceway_common.settings import mask
from sluiceway_operator import feeds, manifests, scaling
from sluiceway_operator.broker import BrokerUnreachable, Depth, DepthReader
from sluiceway_operator.kube import Applied, Kube
from sluiceway_operator.migration import Event, timestamp
from sluiceway_operator.spec import NO_DEFAULTS, Defaults, InvalidSpec, PipelineSpec, parse

log = logging.getLogger(__name__)

PAUSED_ANNOTATION = "sluiceway.io/paused"
CONNECTION_KEYS = ("DATABASE_URL", "AMQP_URL", "REDIS_URL")

Adopt = Callable[[dict[str, Any]], None]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_paused(annotations: dict[str, str] | None) -> bool:
    return (annotations or {}).get(PAUSED_ANNOTATION, "").lower() == "true"


@dataclass
class Report:
    """What a tick found: the Pipeline's status conditions (each one's transition time moves
    only when its status does) and the problems that make its phase ``Failed``."""

    conditions: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def set(self, ok: bool, type_: str, reason: str, message: str) -> None:
        status = "True" if ok else "False"
        before = next((c for c in self.conditions if c.get("type") == type_), None) or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        item = {"type": type_, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": since or timestamp(now_utc())}  # fmt: skip
        self.conditions = [c for c in self.conditions if c.get("type") != type_] + [item]

    def drop(self, type_: str) -> None:
        """No such condition any more: what it told of does not apply."""
        self.conditions = [c for c in self.conditions if c.get("type") != type_]


def phase(migration: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``phase`` and ``message``; none until the migration has a state to tell."""
    if problems:
        return {"phase": "Failed", "message": "; ".join(problems)}
    state = migration.get("state")
    if state is None:
        return {}
    if state != "Succeeded":
        return {"phase": "Migrating", "message": f"migration Job {migration.get('job', '')}"}
    return {"phase": "Running", "message": ""}


FIXED = "fixed"  # status.fetchers.bound when fetcher.replicas is a fixed count


def writers_status(current: int, ready: int, desired: int) -> dict[str, Any]:
    """``status.writers``: the replicas the Deployment is set to, its ready pods, what the
    policy asks for, and the Writers column's ``summary``."""
    return {"current": current, "ready": ready, "desired": desired,
            "summary": f"{ready}/{desired}"}  # fmt: skip


def fetchers_status(*, current: int, ready: int, desired: int, bound: str | None = None,
                    latency: float | None = None, backlog: int | None = None,
                    rate: float | None = None) -> dict[str, Any]:  # fmt: skip
    """``status.fetchers``: as ``writers``, with the bound that holds (``fixed``, or one of
    :class:`~sluiceway_operator.scaling.FetcherPlan`'s), and what the plan was made of: the
    backlog (fetch and delay queues), the fetchers' mean latency and the rate limit they
    follow. What this tick did not read is left out: unknown, not the last reading."""
    found = {"bound": bound, "backlog": backlog, "rateLimit": rate,
             "latencySeconds": None if latency is None else round(latency, 3)}  # fmt: skip
    return {**writers_status(current, ready, desired),
            **{key: value for key, value in found.items() if value is not None}}  # fmt: skip


def describe(reading: dict[str, Any]) -> str:
    """What a fetchers' plan was made of, for its Event."""
    latency = reading.get("latency")
    return (f"{reading.get('bound')}: backlog {reading.get('backlog')}, latency "
            f"{'unknown' if latency is None else f'{latency:.3f} s'}, rate limit "
            f"{settings.plain(reading.get('rate') or 0)}/s")  # fmt: skip


@dataclass(frozen=True)
class Queues:
    """A tick's readings of the pipeline's queues: ``records`` (the records queue), and
    ``backlog`` (the fetch and delay queues together) when something needs it; None for
    what was not read, or could not be (``problem`` then says why)."""

    records: Depth | None = None
    backlog: Depth | None = None
    problem: str | None = None

    def empty(self, feeding: bool) -> bool | None:
        """Whether every queue is empty; None when that is not known. A passive declare
        counts ready messages only, and a queue whose messages are all held by consumers
        reads 0: only the management API's counts can say a pipeline is idle."""
        if self.records is None or self.backlog is None:
            return None
        if "passive-declare" in (self.records.source, self.backlog.source):
            return None
        return self.records.messages == 0 and self.backlog.messages == 0 and not feeding


def sleeps(spec: PipelineSpec) -> bool:
    """Whether a component of the Pipeline may go to zero when it is idle."""
    return spec.writer.min_replicas == 0 or (spec.fetcher.scaled
                                             and spec.fetcher.min_replicas == 0)  # fmt: skip


@dataclass
class Connections:
    database_url: str
    amqp_url: str
    redis_url: str
    management_url: str | None


class SecretProblem(Exception):
    pass


async def read_connections(kube: Kube, spec: PipelineSpec) -> Connections:
    """The URLs in the Pipeline's connections Secret; :class:`SecretProblem` says what is
    wrong with it."""
    secret = await kube.get("Secret", spec.namespace, spec.connections_secret)
    if secret is None:
        raise SecretProblem(f"Secret {spec.connections_secret} not found")
    data = secret.get("data") or {}
    missing = [key for key in CONNECTION_KEYS if key not in data]
    if missing:
        raise SecretProblem(f"Secret {spec.connections_secret} lacks {', '.join(missing)}")
    values = {key: base64.b64decode(value).decode() for key, value in data.items()}
    return Connections(values["DATABASE_URL"], values["AMQP_URL"], values["REDIS_URL"],
                       values.get("MANAGEMENT_URL"))  # fmt: skip


@dataclass
class Controller:
    """The state one Pipeline's reconcile keeps between ticks (lost on restart, by design:
    status and the cluster hold everything that must survive)."""

    kube: Kube
    post: Callable[[Event], None]
    clock: Callable[[], float]
    defaults: Defaults = NO_DEFAULTS  # the operator's, for what a Pipeline leaves out
    stabilizer: scaling.Stabilizer | None = None
    fetcher_stabilizer: scaling.Stabilizer | None = None
    limiter: scaling.StepLimiter = field(default_factory=scaling.StepLimiter)
    fetcher_limiter: scaling.StepLimiter = field(default_factory=scaling.StepLimiter)
    idle: scaling.IdleClock = field(default_factory=scaling.IdleClock)
    idle_since: str | None = None  # status.idleSince: when the idle clock started
    reader: DepthReader | None = None
    redis: aioredis.Redis | None = None
    connections: Connections | None = None
    children: Applied = field(init=False)

    def __post_init__(self) -> None:
        self.children = Applied(self.kube, self.clock)

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def tick(self, name: str, namespace: str, raw_spec: dict[str, Any],
                   annotations: dict[str, str], status: dict[str, Any], adopt: Adopt
                   ) -> dict[str, Any]:  # fmt: skip
        """Reconcile once, from the Pipeline's ``status`` as last written; return the status
        to write."""
        try:
            return await self._tick(name, namespace, raw_spec, annotations, status, adopt)
        except BaseException:
            self.children.forget()  # whatever failed, the next tick applies everything
            raise

    async def _tick(self, name: str, namespace: str, raw_spec: dict[str, Any],
                    annotations: dict[str, str], status: dict[str, Any], adopt: Adopt
                    ) -> dict[str, Any]:  # fmt: skip
        report = Report(list(status.get("conditions") or []))
        try:
            spec = parse(name, namespace, raw_spec, self.defaults)
        except InvalidSpec as exc:
            report.set(False, "SpecValid", "InvalidSpec", str(exc))
            if status.get("message") != str(exc):
                self.post(("Warning", "InvalidSpec", str(exc)))
            return {"phase": "Failed", "message": str(exc), "conditions": report.conditions}
        report.set(True, "SpecValid", "Valid", "")
        await self._children(spec, adopt)
        migration = dict(status.get("migration") or {})
        if migration:
            report.set(migration.get("state") == "Succeeded", "Migrated",
                       migration.get("state", ""), migration.get("reason", ""))  # fmt: skip
            if migration.get("state") == "Failed":
                report.problems.append(f"migration failed: {migration.get('reason', '')}")
        connections = await self._connections(spec, report)
        feed_status, feeding = await self._feeds(spec, list(status.get("feeds") or []),
                                                 connections, report, adopt)  # fmt: skip
        queues = await self._read_queues(spec, connections, report)
        idle, new = self._idle(spec, queues, feeding)
        new.update(await self._writers(spec, annotations, status.get("writerImage"), queues,
                                       idle, report, adopt))  # fmt: skip
        if connections is not None and status.get("rateLimit") != spec.rate_limit:
            new.update(await self._rate_limit(spec, report))
        # After the rate limit: a new one is the one the fetchers are sized for.
        new["fetchers"] = await self._fetchers(spec, annotations, connections, queues, idle,
                                               report, adopt, feeding=feeding)  # fmt: skip
        new["feeds"] = feed_status
        return {**new, **phase(migration, report.problems), "conditions": report.conditions}

    async def _children(self, spec: PipelineSpec, adopt: Adopt) -> None:
        """What the fetchers need, always in shape."""
        child = manifests.config_map(spec)
        adopt(child)
        await self.children.apply(child)

    async def _connections(self, spec: PipelineSpec, report: Report
                           ) -> Connections | None:  # fmt: skip
        """The Secret's URLs, with a depth reader and a Redis client for them (opened anew
        when they change); None when the Secret will not do."""
        try:
            found = await read_connections(self.kube, spec)
        except SecretProblem as exc:
            report.problems.append(str(exc))
            report.set(False, "ConnectionsFound", "SecretProblem", str(exc))
            return None
        report.set(True, "ConnectionsFound", "Found", "")
        if found != self.connections:
            await self.close()
            self.reader = DepthReader(found.amqp_url, found.management_url)
            self.redis = aioredis.Redis.from_url(found.redis_url)
            self.connections = found
        return found

    async def _read_queues(self, spec: PipelineSpec, connections: Connections | None,
                           report: Report) -> Queues:  # fmt: skip
        """The queues' depths the policies need, read once a tick (none without usable
        connections)."""
        if connections is None:
            return Queues()
        assert self.reader is not None
        names = topology.Queues(spec.pipeline)
        try:
            records = await self.reader.read(names.records)
            backlog = (await self.reader.read_total((names.fetch, *names.retries()))
                       if spec.fetcher.scaled or sleeps(spec) else None)  # fmt: skip
        except BrokerUnreachable as exc:
            # Never scale on a missing metric: what runs is kept.
            report.set(False, "BrokerReachable", "Unreachable", str(exc))
            return Queues(problem=str(exc))
        report.set(True, "BrokerReachable", "Reachable", records.source)
        return Queues(records, backlog)

    def _idle(self, spec: PipelineSpec, queues: Queues, feeding: bool
              ) -> tuple[bool, dict[str, Any]]:  # fmt: skip
        """Whether the pipeline has been idle for ``idleSeconds``, and the status fields
        that say so: the depth read (unknown: null, not the last reading) and since when
        every queue has been empty."""
        now = self.clock()
        idle_for = self.idle.observe(now, queues.empty(feeding))
        new: dict[str, Any] = {"queueDepth": None, "depthSource": None, "idleSince": None}
        if queues.records is not None:
            new.update(queueDepth=queues.records.messages, depthSource=queues.records.source)
        # Stamped once, when the idle time starts: the status does not change with each poll.
        if self.idle.since is None:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = timestamp(now_utc() - dt.timedelta(seconds=idle_for))
        new["idleSince"] = self.idle_since
        return self.idle.since is not None and idle_for >= spec.idle_seconds, new

    async def _writers(self, spec: PipelineSpec, annotations: dict[str, str],
                       image: str | None, queues: Queues, idle: bool,
                       report: Report, adopt: Adopt) -> dict[str, Any]:  # fmt: skip
        """Apply the writer Deployment at the replicas wanted; the status fields it makes."""
        found = await self.kube.get("Deployment", spec.namespace, manifests.writer_name(spec))
        current = int(((found or {}).get("spec") or {}).get("replicas") or 0)
        ready = int(((found or {}).get("status") or {}).get("readyReplicas") or 0)
        new: dict[str, Any] = {}
        desired = current
        if image is None:
            desired = 0  # nothing migrated yet: no writer may run
        elif queues.records is not None:
            desired = self._scale(spec, annotations, current, queues.records.messages, idle,
                                  report)  # fmt: skip
        writer = manifests.writer_deployment(spec, desired, image=image)
        adopt(writer)
        if found is None:
            self.children.forget("Deployment", writer["metadata"]["name"])  # deleted by hand
        await self.children.apply(writer)
        if desired != current and found is not None:
            new["lastScaleTime"] = timestamp(now_utc())
            depth = (f"queue depth {queues.records.messages}, {queues.records.source}"
                     if queues.records is not None else "queue depth unknown")  # fmt: skip
            if idle and desired == 0:
                depth += f"; every queue empty for {settings.plain(spec.idle_seconds)}s"
            self.post(("Normal", "ScaledWriters", f"writers {current} -> {desired} ({depth})"))
        new["writers"] = writers_status(current=desired, ready=ready, desired=desired)
        return new

    def _scale(self, spec: PipelineSpec, annotations: dict[str, str], current: int,
               depth: int, idle: bool, report: Report) -> int:  # fmt: skip
        """The writers to run at records-queue ``depth``."""
        now = self.clock()
        if self.stabilizer is None:
            self.stabilizer = scaling.Stabilizer(spec.writer.stabilization)
            self.stabilizer.seed(now, current)
        self.stabilizer.window = spec.writer.stabilization
        self.limiter.limits = spec.writer.scale_down
        low = spec.writer.min_replicas
        wanted = scaling.desired(depth, spec.writer.target_queue_depth, low,
                                 spec.writer.max_replicas)  # fmt: skip
        wanted = scaling.asleep_or_awake(wanted, low=low, current=current, idle=idle,
                                         woken=depth > spec.writer.activation)  # fmt: skip
        return self._step(self.stabilizer, self.limiter, annotations, "Scaling", now, wanted,
                          current, report)  # fmt: skip

    def _step(self, stabilizer: scaling.Stabilizer, limiter: scaling.StepLimiter,
              annotations: dict[str, str], condition: str, now: float, wanted: int,
              current: int, report: Report) -> int:  # fmt: skip
        """From ``current`` toward ``wanted``: up at once; down to the most wanted over the
        stabilization window (to zero at once: that is the idle wait's, already waited), in
        the steps the policies allow; nothing while the Pipeline is paused."""
        recommended = stabilizer.recommend(now, wanted, current)
        if wanted == 0:
            recommended = 0
        if is_paused(annotations):
            report.set(False, condition, "Paused",
                       f"{PAUSED_ANNOTATION} is true; would run {recommended}")  # fmt: skip
            return current
        report.set(True, condition, "Active", "")
        return limiter.limit(now, current, recommended)

    async def _fetchers(self, spec: PipelineSpec, annotations: dict[str, str],
                        connections: Connections | None, queues: Queues, idle: bool,
                        report: Report, adopt: Adopt, feeding: bool = False
                        ) -> dict[str, Any]:  # fmt: skip
        """Apply the fetcher Deployment at the replicas wanted; ``status.fetchers``.
        ``feeding``: a feed's Job is running, so keys are coming even if none waits yet."""
        found = await self.kube.get("Deployment", spec.namespace, manifests.fetcher_name(spec))
        ready = int(((found or {}).get("status") or {}).get("readyReplicas") or 0)
        reading: dict[str, Any]
        if not spec.fetcher.scaled:
            self.fetcher_stabilizer = None  # bounds given again: a window of its own
            self.fetcher_limiter = scaling.StepLimiter()
            report.drop("FetcherScaling")
            current = desired = spec.fetcher.replicas
            reading = {"bound": FIXED}
            if connections is not None:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    reading["rate"] = await self._rate(spec)  # for the Rate column only
        else:
            # replicas is only where the fetchers start; after that the count is the operator's.
            current = (int((found.get("spec") or {}).get("replicas") or 0)
                       if found is not None else spec.fetcher.replicas)  # fmt: skip
            desired, reading = await self._scale_fetchers(spec, annotations, current,
                                                          connections, queues, idle, report,
                                                          feeding)  # fmt: skip
        fetcher = manifests.fetcher_deployment(spec, desired)
        adopt(fetcher)
        if found is None:
            self.children.forget("Deployment", fetcher["metadata"]["name"])  # deleted by hand
        await self.children.apply(fetcher)
        if desired != current and found is not None:
            self.post(("Normal", "ScaledFetchers", f"fetchers {current} -> {desired} "
                       f"({describe(reading)})"))  # fmt: skip
        return fetchers_status(current=desired, ready=ready, desired=desired, **reading)

    async def _scale_fetchers(self, spec: PipelineSpec, annotations: dict[str, str],
                              current: int, connections: Connections | None, queues: Queues,
                              idle: bool, report: Report, feeding: bool = False
                              ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """The fetchers to run, and what the plan was made of; ``current`` whenever a metric
        is missing (a missing metric never scales)."""
        if connections is None:
            report.set(False, "FetcherScaling", "NoConnections",
                       f"no usable connections Secret; fetchers kept at {current}")  # fmt: skip
            return current, {}
        assert self.redis is not None
        now = self.clock()
        if self.fetcher_stabilizer is None:
            self.fetcher_stabilizer = scaling.Stabilizer(spec.fetcher.stabilization)
            self.fetcher_stabilizer.seed(now, current)
        self.fetcher_stabilizer.window = spec.fetcher.stabilization
        self.fetcher_limiter.limits = spec.fetcher.scale_down
        depth = queues.backlog
        if depth is None:
            report.set(False, "FetcherScaling", "BrokerUnreachable",
                       f"fetchers kept at {current}: {queues.problem}")  # fmt: skip
            return current, {}
        try:
            reports = await store.FetcherReports(self.redis, spec.pipeline).read()
            rate = await self._rate(spec)
        except (redis.exceptions.RedisError, OSError) as exc:
            report.set(False, "FetcherScaling", "RedisUnreachable",
                       f"fetchers kept at {current}: {mask(str(exc))}")  # fmt: skip
            return current, {"backlog": depth.messages}
        latency = scaling.mean_latency(list(reports.values()))
        # A running feed's keys count as one waiting: sleeping fetchers wake as it starts,
        # not a poll after its first keys are queued.
        backlog = max(depth.messages, 1 if feeding else 0)
        low, high = spec.fetcher.min_replicas, spec.fetcher.max_replicas
        assert low is not None
        assert high is not None
        plan = scaling.fetchers_wanted(backlog=backlog, rate=rate, latency=latency,
                                       concurrency=spec.fetcher.concurrency, low=low,
                                       high=high, current=current)  # fmt: skip
        woken = feeding or depth.messages > spec.fetcher.activation
        wanted = scaling.asleep_or_awake(plan.replicas, low=low, current=current, idle=idle,
                                         woken=woken)  # fmt: skip
        # Asleep below the activation threshold: nothing the fetchers are wanted for yet.
        bound = scaling.IDLE if wanted == 0 else plan.bound
        reading = {"bound": bound, "backlog": depth.messages, "latency": latency,
                   "rate": rate}  # fmt: skip
        count = self._step(self.fetcher_stabilizer, self.fetcher_limiter, annotations,
                           "FetcherScaling", now, wanted, current, report)  # fmt: skip
        return count, reading

    async def _rate(self, spec: PipelineSpec) -> float:
        """The limit the fetchers follow: the pipeline's override in Redis (the operator's
        own copy of ``source.rateLimit``, or ``sluiceway rate set``'s), else the spec's."""
        assert self.redis is not None
        override = await store.RateKeys(self.redis, spec.pipeline).override()
        return spec.rate_limit if override is None else override

    async def _feeds(self, spec: PipelineSpec, before: list[dict[str, Any]],
                     connections: Connections | None, report: Report, adopt: Adopt
                     ) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
        """The feeds' CronJobs in shape; ``status.feeds``, an Event per failed run; and
        whether a feed's Job is running."""
        outcome = await feeds.step(self.children, self.redis if connections else None, spec,
                                   before, adopt)  # fmt: skip
        for event in outcome.events:
            self.post(event)
        if spec.feeds and connections is not None:
            # The runs' outcomes only: the CronJobs themselves run whatever Redis does.
            report.set(outcome.runs_problem is None, "FeedRunsRead",
                       "RedisUnreachable" if outcome.runs_problem else "Read",
                       outcome.runs_problem or "")  # fmt: skip
        elif not spec.feeds:
            report.drop("FeedRunsRead")
        return outcome.status, outcome.running

    async def _rate_limit(self, spec: PipelineSpec, report: Report) -> dict[str, Any]:
        """The new rate limit, to Redis for the running fetchers."""
        assert self.redis is not None
        try:
            await store.RateKeys(self.redis, spec.pipeline).set_override(spec.rate_limit)
        except (redis.exceptions.RedisError, OSError) as exc:
            report.problems.append(f"Redis: {mask(str(exc))}")
            report.set(False, "RateLimitApplied", "RedisUnreachable", mask(str(exc)))
            return {}
        limit = settings.plain(spec.rate_limit)
        self.post(("Normal", "RateLimitSet", f"{limit} requests/s for every fetcher"))
        report.set(True, "RateLimitApplied", "Applied", "")
        return {"rateLimit": spec.rate_limit}
