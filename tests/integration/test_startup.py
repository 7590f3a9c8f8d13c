"""A service that cannot reach what it needs says so in one line and exits 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ServiceUrls

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sluiceway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "sluiceway_common", *args], env={**clean, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (("writer",), "PostgreSQL"),
        (("fetcher", "--source-url", "http://127.0.0.1:9/{key}"), "RabbitMQ"),
        (("enqueue", "/dev/null"), "RabbitMQ"),
        (("failed", "retry"), "RabbitMQ"),
        (("status",), "RabbitMQ"),
        (("status",), "Redis"),
        (("status",), "PostgreSQL"),
    ],
)
def test_unreachable_service_is_one_line(
    services: ServiceUrls, args: tuple[str, ...], service: str
) -> None:
    port = closed_port()
    reachable = {
        "SLUICEWAY_DATABASE_URL": services.database,
        "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_REDIS_URL": services.redis,
    }
    name, url = {
        "PostgreSQL": ("SLUICEWAY_DATABASE_URL", f"postgresql://writer:s3cret@127.0.0.1:{port}/db"),
        "RabbitMQ": ("SLUICEWAY_AMQP_URL", f"amqp://fetcher:s3cret@127.0.0.1:{port}/"),
        "Redis": ("SLUICEWAY_REDIS_URL", f"redis://:s3cret@127.0.0.1:{port}/0"),
    }[service]
    result = sluiceway(*args, **{**reachable, name: url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sluiceway {args[0]}: cannot reach {service} at ")
    assert ":***@" in lines[0]
    assert "s3cret" not in result.stderr


def test_fetcher_says_when_redis_is_unreachable(services: ServiceUrls) -> None:
    result = sluiceway(
        "fetcher", "--source-url", "http://127.0.0.1:9/{key}",
        SLUICEWAY_AMQP_URL=services.amqp,
        SLUICEWAY_REDIS_URL=f"redis://:s3cret@127.0.0.1:{closed_port()}/0",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("sluiceway fetcher: cannot reach Redis at redis://:***@")
    assert "s3cret" not in result.stderr
