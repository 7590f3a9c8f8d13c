"""The sample users: a pure function of the key."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import Any

FIRST_NAMES = (
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Leslie",
    "Shafi",
    "Tony",
    "Jean",
    "Niklaus",
)
LAST_NAMES = (
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Lamport",
    "Goldwasser",
    "Hoare",
)
TAGS = ("admin", "beta", "billing", "churned", "enterprise", "trial", "vip", "support")
EPOCH = date(2015, 1, 1)


def _digest(key: str, salt: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogatepass")).digest()


def fraction(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``key`` and ``salt``, evenly spread over keys."""
    return int.from_bytes(_digest(key, salt)[:8], "big") / 2**64


def is_missing(key: str, not_found_rate: float) -> bool:
    """Whether the sample API answers 404 for ``key`` at this not-found rate."""
    return fraction(key, "not-found") < not_found_rate


def user(key: str) -> dict[str, Any]:
    """The user the sample API serves for ``key``."""
    d = _digest(key, "user")
    first, last = FIRST_NAMES[d[0] % len(FIRST_NAMES)], LAST_NAMES[d[1] % len(LAST_NAMES)]
    return {
        "id": key,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}.{d[2]:02x}{d[3]:02x}@example.test",
        "age": 18 + d[4] % 70,
        "score": int.from_bytes(d[5:7], "big") / 100,
        "active": d[7] % 5 != 0,
        "tags": sorted({TAGS[b % len(TAGS)] for b in d[8 : 8 + d[9] % 4]}),
        "signed_up": (EPOCH + timedelta(days=int.from_bytes(d[10:12], "big") % 4000)).isoformat(),
        "address": {
            "city": ("Lisbon", "Oslo", "Quito", "Osaka", "Accra")[d[12] % 5],
            "postcode": f"{int.from_bytes(d[13:16], 'big') % 100000:05d}",
        },
    }


def listed_key(index: int) -> str:
    """The key of the ``index``-th user ``GET /users`` lists."""
    return f"user-{index:06d}"
