"""The two message formats on the wire.

A *fetch task* is ``{"key": <str>}``. A *record* is
``{"key": <str>, "payload": <any JSON>, "fetched_at": <ISO-8601 with offset>}``; both are
UTF-8 JSON with content type ``application/json``. A records-queue message holds one record
object or, *packed*, a JSON array of them; ``content_encoding`` ``gzip`` or ``zstd`` marks a
compressed body. Anyone may publish to the records queue through the default exchange, so
decoding trusts nothing.

A key reaches the upstream in a URL as one percent-encoded path segment or query value
(:func:`key_url`): the fetcher builds its requests so, and the demo checks what it landed
against the same URLs.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
import zstandard

# Marks a fetch task published by ``sluiceway failed retry``: the fetcher that lands its
# record removes the key from the failed set.
RETRY_HEADER = "x-sluiceway-retry"
# Which attempt at its key a fetch task is (absent: the first).
ATTEMPT_HEADER = "x-sluiceway-attempt"


def key_url(template: str, key: str) -> str:
    """The URL of ``key``: every character outside the unreserved set is percent-encoded,
    so a key stays one path segment or query value (``a/b`` becomes ``a%2Fb``). A key that is
    all dots (``.``, ``..``) has its dots encoded too: as a path segment the client would
    otherwise resolve it, and ``/users/..`` would fetch ``/``."""
    encoded = quote(key, safe="")
    if not encoded.strip("."):
        encoded = "%2E" * len(encoded)
    return template.replace("{key}", encoded)


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


PLAIN_ENCODINGS = frozenset({None, "", "identity"})
COMPRESSED_ENCODINGS = ("gzip", "zstd")
# A run of 19 digits may be an integer past 64 bits, which orjson would turn into a float
# without a word; such bodies (rare) take the standard library's exact parser instead.
LONG_DIGITS = re.compile(rb"\d{19}")


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body, decompressed per ``content_encoding``; refuses more than ``limit`` bytes out,
    so a small bomb cannot exhaust memory."""
    if content_encoding in PLAIN_ENCODINGS:
        data = body
    elif content_encoding == "gzip":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
                data = stream.read(limit + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise BadMessage(f"gzip body does not decompress: {exc}") from None
    elif content_encoding == "zstd":
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as stream:
                data = stream.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise BadMessage(f"zstd body does not decompress: {exc}") from None
    else:
        raise BadMessage(
            f"unknown content_encoding {content_encoding!r}: expected gzip, zstd or none"
        )
    if len(data) > limit:
        raise BadMessage(f"body is larger than {limit} bytes once decompressed")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(data: bytes) -> tuple[Any, bool]:
    """Parse JSON; return the document and whether it took the exact (slow) parser."""
    if LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data), False
        except orjson.JSONDecodeError as exc:
            raise BadMessage(f"record is not JSON: {exc}") from None
    try:
        return json.loads(data, parse_constant=_no_constant), True
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"record is not JSON: {exc}") from None


def _dump(value: Any, exact: bool) -> str:
    if not exact:
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:
            # orjson writes at most 255 levels of nesting but reads 1024: a deeper payload
            # takes the standard library's encoder, which goes to about its recursion limit.
            pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise BadMessage("payload is nested too deeply to re-encode") from None


def _record(doc: Any, exact: bool) -> Record:
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
    return Record(key, _dump(doc["payload"], exact), fetched_at)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one message held: its good records, and each bad element of a packed message
    with the reason (the element as JSON, to be dead-lettered on its own)."""

    records: list[Record]
    bad: list[tuple[bytes, str]]
    size: int  # bytes, decompressed


def decode_message(body: bytes, content_encoding: str | None, limit: int) -> Decoded:
    """Decode a records-queue message: one record object, or a JSON array of them (a packed
    message), possibly compressed. Raises :class:`BadMessage` when nothing in it can land."""
    data = decompress(body, content_encoding, limit)
    doc, exact = _parse(data)
    if isinstance(doc, dict):
        return Decoded([_record(doc, exact)], [], len(data))
    if not isinstance(doc, list):
        raise BadMessage("record is not a JSON object or an array of them")
    if not doc:
        raise BadMessage("packed message holds no records")
    records, bad = [], []
    for element in doc:
        try:
            records.append(_record(element, exact))
        except BadMessage as exc:
            bad.append((_dump(element, exact).encode(), str(exc)))
    return Decoded(records, bad, len(data))


def decode_record(body: bytes) -> Record:
    """Decode a plain body that must hold exactly one record."""
    decoded = decode_message(body, None, max(len(body), 1))
    if decoded.bad and not decoded.records:
        raise BadMessage(decoded.bad[0][1])
    if len(decoded.records) != 1 or decoded.bad:
        raise BadMessage("expected one record")
    return decoded.records[0]
