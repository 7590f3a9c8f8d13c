"""The observer's HTTP server on its own: probes and metrics, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from sluiceway_common.lifecycle import StartupError
from sluiceway_common.observe import Observer, Readings, histogram
from tests.integration.helpers import eventually, free_port, get, scrape

pytestmark = pytest.mark.integration


async def test_readyz_names_each_check_and_hides_what_a_failure_says() -> None:
    broken = True

    async def ok() -> None:
        pass

    async def database() -> None:
        if broken:
            raise ConnectionError("cannot reach postgresql://app:pw-S3cret@db:5432/x")

    async def hangs() -> None:
        await asyncio.sleep(60)

    async with Observer(free_port(), check_timeout=0.2) as observer:
        status, body = await get(observer.port, "/readyz")
        assert (status, json.loads(body)["reason"]) == (503, "starting")
        observer.add_check("rabbitmq", ok)
        observer.add_check("postgresql", database)
        status, body = await get(observer.port, "/readyz")
        assert status == 503
        assert "pw-S3cret" not in body
        assert json.loads(body) == {
            "ready": False,
            "checks": {
                "rabbitmq": "ok",
                "postgresql": "ConnectionError: cannot reach postgresql://app:***@db:5432/x",
            },
        }
        broken = False
        status, body = await get(observer.port, "/readyz")
        assert (status, json.loads(body)) == (
            200, {"ready": True, "checks": {"rabbitmq": "ok", "postgresql": "ok"}}
        )  # fmt: skip
        observer.add_check("redis", hangs)
        status, body = await get(observer.port, "/readyz")
        assert (status, json.loads(body)["checks"]["redis"]) == (503, "timed out")


def _get_in_thread(url: str, into: list[int]) -> threading.Thread:
    def run() -> None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                into.append(response.status)
        except urllib.error.HTTPError as exc:
            into.append(exc.code)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_healthz_fails_after_the_event_loop_was_blocked() -> None:
    async with Observer(free_port(), heartbeat=0.05, stall=0.5) as observer:
        url = f"http://127.0.0.1:{observer.port}/healthz"

        async def alive() -> bool:
            return (await get(observer.port, "/healthz"))[0] == 200

        await eventually(alive, what="/healthz 200")
        answers: list[int] = []
        thread = _get_in_thread(url, answers)
        time.sleep(1.5)  # noqa: ASYNC251 -- the point: the event loop is blocked
        # The request arrived while the loop was blocked: it is answered once the loop turns,
        # and the loop's last turn came too late.
        await asyncio.to_thread(thread.join)
        assert answers == [503]
        await eventually(alive, what="/healthz 200 again")


async def test_a_port_in_use_is_a_startup_error() -> None:
    async with Observer(free_port()) as first:
        with pytest.raises(StartupError, match=f"port {first.port}"):
            await Observer(first.port).start()


async def test_metrics_serve_readings_and_histograms_with_a_pipeline_label() -> None:
    held = {"count": 3}
    by_cause = {"undecodable": 1, "refused": 2}

    async with Observer(free_port()) as observer:
        readings = Readings(observer.registry, "p1")
        readings.counter("sluiceway_things", "Things", lambda: held["count"])
        readings.counters(
            "sluiceway_dead", "Dead", ("cause",),
            lambda: {(cause,): n for cause, n in by_cause.items()},
        )  # fmt: skip
        readings.gauge("sluiceway_held", "Held", lambda: 7)
        timing = histogram(observer.registry, "p1", "sluiceway_took_seconds", "Took", (0.1, 1))
        timing.observe(0.5)
        before = await scrape(observer.port)
        held["count"] = 5
        timing.observe(2)
        after = await scrape(observer.port)
    assert before.value("sluiceway_things_total", pipeline="p1") == 3
    assert after.value("sluiceway_things_total", pipeline="p1") == 5
    assert after.value("sluiceway_dead_total", pipeline="p1", cause="refused") == 2
    assert after.value("sluiceway_held", pipeline="p1") == 7
    assert after.value("sluiceway_took_seconds_count", pipeline="p1") == 2
    assert after.value("sluiceway_took_seconds_bucket", pipeline="p1", le="1.0") == 1
    assert "process_cpu_seconds_total" in after.names()
