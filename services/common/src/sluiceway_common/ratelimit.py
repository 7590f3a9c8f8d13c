"""Rate-limit arithmetic: GCRA with reservations, and the bound on the upstream's pauses.

GCRA keeps one number per pipeline, the *theoretical arrival time* (TAT) of the next request.
With an emission interval ``T = 1/rate`` and a burst of ``b`` requests, the next request may
start at ``max(now, TAT - (b - 1) * T)``; reserving it moves TAT to ``max(TAT, start) + T``.
Here a caller reserves *slots* rather than asking "may I go now?": it is told when they
start and sleeps until then, so a waiting caller asks once, not in a loop, and the requests
of every fetcher come out spaced by ``T``. One reservation is a *run* of slots: ``granted``
slots, the first ``wait`` seconds from now, then one every ``T``.

Three rules keep reservations honest:

- no slot is reserved more than :data:`AHEAD` seconds ahead. A caller whose next slot would
  be later reserves nothing and is told when to ask again (when that slot is half as far),
  so a new limit or an upstream's pause reaches every fetcher within that time, not after
  every slot reserved before it;
- a fetcher asks for as many slots as it has requests waiting, and gets those of them that
  start within :data:`AHEAD`;
- only while the limit is not being reached (the first slot is *now*) does a fetcher get
  :data:`SPARE` seconds' worth more, for the requests it is about to make. A fetcher far
  below a high limit then asks Redis once for many requests instead of once for every one or
  two. Slots it does not use by their time are dropped: no one else was asking for them, and
  a fetcher that asks meanwhile waits at most that long. While the limit is reached nobody
  gets spare slots, so with a backlog none go to waste.

The arithmetic runs in one place, the Lua script that runs it atomically in Redis on Redis's
clock (:mod:`sluiceway_common.limiter`). ``tests/gcra.py`` is its reference model in
Python, operation for operation: the unit tests check the properties above on the model, and
an integration test holds the script to the model's answers on a table of cases.
"""

from __future__ import annotations

# After an idle spell this many seconds' worth of requests may start at once (at least one):
# the burst lets fetchers that arrive together go together, and is small enough that any
# 1-second window holds at most rate x 1.02 + 1 slots, leaving the rest of the 5% the issue
# allows for timing jitter between a slot and its request reaching the upstream.
BURST = 0.02
# How far ahead a slot may be reserved (see the module docstring): long enough that a
# fetcher holds its next slots before they are due, short enough that what was reserved
# before a pause or a lower limit took effect is a handful of requests.
AHEAD = 0.05
# Spare slots while the limit is not reached, in seconds' worth (none below 100/s, where a
# Redis call per request costs little): at the demo's 5000/s, 50 slots a call.
SPARE = 0.01
# The share of the limit the slots are spaced for. The upstream counts requests as they
# arrive, after the network and both ends' scheduling have moved each one a little from its
# slot; aiming slightly under the limit keeps those shifts inside the 5% any second may go
# over, while the limit is still used well above the 95% asked of it.
AIM = 0.985
# The longest pause an upstream's Retry-After can impose; a longer one is cut to this, with
# a warning, so that a mistaken header cannot stop a pipeline for days.
MAX_PAUSE = 3600.0


def pause_seconds(requested: float) -> float:
    """How long to pause for an upstream that asked for ``requested`` seconds."""
    return min(max(requested, 0.0), MAX_PAUSE)
