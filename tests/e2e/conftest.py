"""Running the real ``sluiceway`` processes, as a user would start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServiceUrls


class Processes:
    """Starts ``sluiceway`` subcommands with a test's services and pipeline; stops them all."""

    def __init__(self, services: ServiceUrls, database_url: str, pipeline: str, logs: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")},
            "SLUICEWAY_DATABASE_URL": database_url,
            "SLUICEWAY_AMQP_URL": services.amqp,
            "SLUICEWAY_REDIS_URL": services.redis,
            "SLUICEWAY_PIPELINE": pipeline,
        }
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sluiceway_common", *args]

    def start(
        self, name: str, *args: str, stdout: int | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(
            self.command(*args),
            env={**self.env, **env},
            stdout=stdout or log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.started.append(process)
        return process

    def run(
        self, *args: str, stdin: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args),
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    def terminate(self, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=timeout)
        if process.stdout is not None:
            process.stdout.close()
        return status

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def processes(
    services: ServiceUrls, database_url: str, pipeline: str, tmp_path: Path
) -> Iterator[Processes]:
    procs = Processes(services, database_url, pipeline, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def sample_api(processes: Processes, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the sample API on a free port; return it and its base URL."""
    process = processes.start(
        "sample-api", "sample-api", "--sample-port", "0", *args, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("listening on "), processes.log("sample-api")
    return process, line.split()[-1]
