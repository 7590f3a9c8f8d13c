"""Log lines: redaction of secrets, both output forms, and the level honoured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from sluiceway_common import logs
from sluiceway_fetcher.config import FetcherSettings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup() changes the root logger and the secret list: put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in (*logs.packages(), "aiormq")}
    secrets = set(logs._secrets)
    tools = logging.getLogger("aio_pika.tools")
    filters = tools.filters[:]
    try:
        yield
    finally:
        tools.filters[:] = filters
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)
        logs._secrets.clear()
        logs._secrets.update(secrets)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("at postgresql://app:pa55w0rd@db:5432/x now", "at postgresql://app:***@db:5432/x now"),
        ("amqps://u:p%40ss@mq/ and redis://:r3dis@h:6379/0", "amqps://u:***@mq/ and redis://:***@h:6379/0"),
        ("a password with an @: redis://u:p@ss@h/0", "a password with an @: redis://u:***@h/0"),
        ("no password: redis://h:6379/0 or http://u@h/", "no password: redis://h:6379/0 or http://u@h/"),
        ("time 12:30:05@host", "time 12:30:05@host"),
    ],
)  # fmt: skip
def test_redact_masks_url_passwords(text: str, shown: str, restore_logging: None) -> None:
    assert logs.redact(text) == shown


def test_redact_masks_registered_secrets_but_not_short_values(restore_logging: None) -> None:
    logs.keep_secret("Bearer tok-123456", "tok-123456", "ab")
    assert (
        logs.redact("sent Bearer tok-123456, echoed tok-123456; ab") == "sent ***, echoed ***; ab"
    )


def test_the_fetchers_secret_values_are_the_passwords_and_header_values() -> None:
    config = FetcherSettings.from_args(
        None,
        {
            "SLUICEWAY_AMQP_URL": "amqp://app:mq%2Fpass@mq:5672/",
            "SLUICEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
            "SLUICEWAY_SOURCE_URL": "https://api.example.com/u/{key}",
            "SLUICEWAY_SOURCE_HEADERS": '{"Authorization": "Bearer abc-123", "X-Key": "k-456"}',
        },
    )
    found = config.secrets()
    assert sorted(found) == sorted(["mq%2Fpass", "mq/pass", "Bearer abc-123", "k-456"])


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_line_never_shows_a_secret(
    json_lines: bool, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("DEBUG", json_lines=json_lines, secrets=["Bearer abc-123"])
    log = logging.getLogger("sluiceway_fetcher.test")
    log.warning("upstream said %s via %s", "Bearer abc-123", "amqp://app:pw-999@mq/")
    try:
        raise ValueError("postgresql://app:pw-777@db/x refused Bearer abc-123")
    except ValueError:
        log.debug("details", exc_info=True)
    out = capsys.readouterr().err
    for secret in ("abc-123", "pw-999", "pw-777"):
        assert secret not in out
    assert "amqp://app:***@mq/" in out
    if json_lines:
        first = json.loads(out.splitlines()[0])
        assert first["level"] == "warning"
        assert first["msg"] == "upstream said *** via amqp://app:***@mq/"


def test_the_level_is_honoured_for_sluiceway_and_the_libraries(restore_logging: None) -> None:
    logs.setup("ERROR", json_lines=True)
    assert not logging.getLogger("sluiceway_writer.consumer").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("aio_pika").isEnabledFor(logging.WARNING)
    logs.setup("DEBUG", json_lines=True)
    assert logging.getLogger("sluiceway_writer.consumer").isEnabledFor(logging.DEBUG)
    # Every member that offers a command is sluiceway's own, the admin commands included.
    for member in ("admin", "common", "fetcher", "operator", "sample_api", "writer"):
        assert logging.getLogger(f"sluiceway_{member}.x").isEnabledFor(logging.DEBUG), member
    # The libraries stay at WARNING: their debug output is not sluiceway's to show.
    assert not logging.getLogger("aio_pika").isEnabledFor(logging.INFO)
    assert logging.getLogger("aio_pika").isEnabledFor(logging.WARNING)


def test_json_and_text_lines_are_one_line_each(restore_logging: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    record = logging.LogRecord("sluiceway_writer", logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert handler.format(record).endswith("INFO    sluiceway_writer: a b")
    assert json.loads(logs.JsonFormatter().format(record))["msg"] == "a b"


def test_aio_pikas_error_for_a_channel_reopened_on_a_lost_connection_shows_only_at_debug(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """aio-pika logs an error, with its objects' reprs, for every channel that tries to reopen
    on a connection just lost; sluiceway says the connection was lost itself, once."""
    tools = logging.getLogger("aio_pika.tools")
    reopen = "<OneShotCallback: cb=<bound method RobustChannel._on_close of <RobustChannel>>>"
    other = "<OneShotCallback: cb=<function on_message>>"

    def emit() -> list[dict[str, str]]:
        for callback in (reopen, other):
            tools.error("Callback %s error: %s: %s", callback, "RuntimeError", "closed")
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    logs.setup("INFO", json_lines=True)
    logs.setup("INFO", json_lines=True)  # set up twice (the CLI then a command): one filter
    assert len(tools.filters) == 1
    assert [(line["level"], "on_message" in line["msg"]) for line in emit()] == [("error", True)]
    logs.setup("DEBUG", json_lines=True)
    shown = emit()
    assert [line["level"] for line in shown] == ["debug", "error"]
    assert "RobustChannel._on_close" in shown[0]["msg"]
