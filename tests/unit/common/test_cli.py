"""The CLI as a user meets it: subprocesses of the installed ``sluiceway``, no services."""

import subprocess
import sys

import pytest


def sluiceway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluiceway_common", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_help_lists_every_subcommand() -> None:
    result = sluiceway("--help")
    assert result.returncode == 0
    for name in ("migrate", "enqueue", "fetcher", "writer", "status", "failed", "dead", "rate",
                 "sample-api", "demo"):  # fmt: skip
        assert name in result.stdout


@pytest.mark.parametrize(
    ("args", "variable", "allowed"),
    [
        (("writer", "--batch-size", "0"), "--batch-size='0'", "an integer from 1 to 30000"),
        (("writer", "--batch-timeout", "soon"), "--batch-timeout='soon'", "seconds"),
        (("fetcher", "--source-url", "http://h/{id}"), "--source-url=", "{key}"),
        (
            ("fetcher", "--source-url", "http://h/{key}", "--rate-limit", "-1"),
            "--rate-limit='-1'",
            "requests per second",
        ),
        (("status", "--pipeline", "Bad Name"), "--pipeline='Bad Name'", "lowercase"),
        (("writer", "--write-mode", "fast"), "--write-mode='fast'", "direct or buffered"),
        (("writer", "--batch-max-bytes", "10"), "--batch-max-bytes='10'", "from 1024"),
        (
            ("operator", "--operator-peering", "Ops_Peering"),
            "--operator-peering='Ops_Peering'",
            "a Kubernetes object name",
        ),
        (
            ("operator", "--operator-peering-lifetime", "1"),
            "--operator-peering-lifetime='1'",
            "seconds, an integer from 5 to 3600",
        ),
        (
            ("operator", "--operator-peering", "ops", "--operator-namespaces", "team-*"),
            "SLUICEWAY_OPERATOR_NAMESPACES has 'team-*'",
            "name each namespace",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(
    args: tuple[str, ...], variable: str, allowed: str
) -> None:
    result = sluiceway(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert allowed in lines[0]


def test_bad_environment_variable_is_named() -> None:
    import os

    env = {**os.environ, "SLUICEWAY_BATCH_SIZE": "lots"}
    result = sluiceway("writer", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sluiceway writer: SLUICEWAY_BATCH_SIZE='lots' is not allowed: "
        "expected an integer from 1 to 30000"
    )


def test_fetcher_needs_a_source_url() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SLUICEWAY_SOURCE_URL"}
    result = sluiceway("fetcher", env=env)
    assert result.returncode == 2
    assert "SLUICEWAY_SOURCE_URL is not set" in result.stderr


def test_a_bad_secret_is_never_echoed() -> None:
    result = sluiceway(
        "fetcher", "--source-url", "http://h/{key}",
        "--source-headers", '{"Authorization": "Bearer s3cret"',
    )  # fmt: skip
    assert result.returncode == 2
    assert "s3cret" not in result.stderr
    assert "--source-headers='<hidden>' is not allowed" in result.stderr
