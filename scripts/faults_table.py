"""Print the README's reliability table from the checks in .run/faults.jsonl.

Usage: python scripts/faults_table.py [--suite test-faults]  (default: every suite's lines)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / ".run" / "faults.jsonl"

# What each scenario showed the system doing, beyond the table being exact.
DID = {
    "writer SIGKILL (direct)": "killed three times a run, at random points after a batch and once "
    "with its transaction's statements or answers held; unacked batches redelivered and rewritten",
    "writer SIGKILL (buffered)": "the same in buffered mode: the merger's advisory lock went "
    "with the dead session; the next writer merged everything",
    "writer SIGKILL (direct, sink table)": "the same, landing in a typed table of the user's "
    "own (SLUICEWAY_SINK_*): every typed column matched its payload, newest fetch winning",
    "writer SIGKILL (buffered, sink table)": "the same in buffered mode: the merger upserted "
    "into the typed table",
    "fetcher SIGKILL": "tasks of requests in flight and of publishes awaiting confirms were "
    "redelivered and fetched again; a record published twice landed once",
    "fetcher SIGTERM in retry backoff": "exited 0 in under 5 s; the retries waited on the "
    "delay queues and a new fetcher landed them",
    "broker connections cut": "robust connections came back in ~5 s; the writer's unackable "
    "batch was redelivered (this crashed the writer before the fix)",
    "PostgreSQL connections terminated": "each terminated batch retried with backoff, none "
    "dead-lettered (an asyncpg error class crashed the writer before the fix)",
    "Redis away 3 s": "no request reached the upstream while Redis was away; fetching resumed "
    "within the limit + 5%",
    "upstream all 503 for 2 s": "every key retried on the delay queues until the upstream "
    "recovered; none failed",
    "upstream 429 Retry-After to 3 fetchers": "all three fetchers paused for the Retry-After",
    "upstream answers never come": "each request timed out after 1 s and was retried; keys "
    "that never answer failed with reason timeout",
    "hostile upstream bodies and escaping keys": "not JSON, too deep (5,000 levels), 2 MiB "
    "over a 1 MiB limit, a slow drip: each key failed with its reason; 500-level nesting and a "
    "wrong content type landed; every escaping key stayed one path segment",
    "RabbitMQ restarted": "durable queues and persistent messages survived; the services "
    "reconnected by themselves",
    "PostgreSQL restarted": "the writer retried through the restart, nothing dead-lettered",
    "soak": "see below",
}


def main() -> None:
    suite = sys.argv[sys.argv.index("--suite") + 1] if "--suite" in sys.argv else None
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for line in REPORT.read_text().splitlines():
        check = json.loads(line)
        if suite and check["suite"] != suite:
            continue
        row = totals[check["scenario"]]
        row[0] += 1
        row[1] += check["rows_checked"] + check["failed_checked"]
        row[2] += check["lost"]
        row[3] += check["duplicated"]
    for scenario, (runs, rows, lost, duplicated) in totals.items():
        did = DID.get(scenario, "")
        print(f"| {scenario} | {runs} | {rows:,} | {lost} | {duplicated} | {did} |")


if __name__ == "__main__":
    main()
