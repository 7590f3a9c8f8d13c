"""The two message formats on the wire.

A *fetch task* is ``{"key": <str>}``. A *record* is
``{"key": <str>, "payload": <any JSON>, "fetched_at": <ISO-8601 with offset>}``; both are
UTF-8 JSON with content type ``application/json``. A record may also be published by hand to
the records queue through the default exchange, so decoding trusts nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson


class BadMessage(ValueError):
    """A message that can never be processed; the text is the reason kept with it."""


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    payload: str  # the upstream JSON, serialized, as the jsonb column receives it
    fetched_at: datetime


def encode_task(key: str) -> bytes:
    return orjson.dumps({"key": key})


def decode_task(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"fetch task is not JSON: {exc}") from None
    key = doc.get("key") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not key:
        raise BadMessage('fetch task has no "key" string')
    return key


def encode_record(key: str, payload_json: bytes, fetched_at: datetime) -> bytes:
    """Build a record body around ``payload_json``, the upstream's JSON, already validated."""
    if fetched_at.tzinfo is None:
        raise ValueError("fetched_at must carry a UTC offset")
    return b"".join(
        (
            b'{"key":',
            orjson.dumps(key),
            b',"fetched_at":',
            orjson.dumps(fetched_at.isoformat()),
            b',"payload":',
            payload_json,
            b"}",
        )
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_record(body: bytes) -> Record:
    # The standard library parser, not orjson: orjson turns integers beyond 64 bits into
    # floats without a word, and a payload must land as the upstream sent it.
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"record is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadMessage("record is not a JSON object")
    key = doc.get("key")
    if not isinstance(key, str) or not key:
        raise BadMessage('record has no "key" string')
    if "payload" not in doc:
        raise BadMessage('record has no "payload"')
    stamp = doc.get("fetched_at")
    if not isinstance(stamp, str):
        raise BadMessage('record has no "fetched_at" string')
    try:
        fetched_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise BadMessage(f'"fetched_at" is not ISO-8601: {stamp[:64]!r}') from None
    if fetched_at.tzinfo is None:
        raise BadMessage(f'"fetched_at" has no UTC offset: {stamp[:64]!r}')
    payload = json.dumps(doc["payload"], ensure_ascii=False, separators=(",", ":"))
    return Record(key, payload, fetched_at)
