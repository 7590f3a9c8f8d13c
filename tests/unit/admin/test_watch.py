"""The live view's arithmetic and drawing, without a terminal or a service."""

from __future__ import annotations

import io

import pytest

from sluiceway_admin.reading import Status
from sluiceway_admin.status import render as show
from sluiceway_admin.watch import History, Screen, document, duration, render, trend
from sluiceway_common.topology import QueueDepth, Queues

Q = Queues("p")


def status(
    fetch: int = 0,
    records: int = 0,
    dead: int = 0,
    rows: int | None = 0,
    failed: int = 0,
    retrying: int = 0,
    buffered: int = 0,
    writers: int = 1,
    in_flight: int = 0,
    rows_table: str = "records",
) -> Status:
    return Status(
        "p",
        [
            QueueDepth(Q.fetch, True, fetch, 2),
            QueueDepth(Q.records, True, records, writers),
            QueueDepth(Q.dead, True, dead, 0),
        ],
        rows,
        failed,
        buffered,
        retrying,
        in_flight,
        rows_table,
    )


def test_rates_are_net_changes_per_second() -> None:
    t = trend(
        status(fetch=1000, records=10, rows=100, failed=1, retrying=20),
        status(fetch=600, records=30, rows=400, failed=5, retrying=20),
        4.0,
    )
    assert (t.fetch_drain, t.records_drain, t.write_rate, t.failed_rate) == (100, -5, 75, 1)
    assert t.eta == pytest.approx(620 / 100)  # the delay queues are still to be fetched


def test_buffered_rows_count_as_landed() -> None:
    assert trend(status(rows=0), status(rows=10, buffered=30), 2).write_rate == 20


@pytest.mark.parametrize(
    ("earlier", "later", "eta"),
    [
        (status(fetch=500), status(fetch=700), None),  # filling: no ETA
        (status(fetch=500), status(fetch=500), None),  # stuck
        (status(records=90), status(records=30), 0.5),  # fetching done: the records' ETA
        (status(records=30), status(records=90), None),
        (status(fetch=5, records=5), status(), 0.0),  # drained
        (status(), status(), 0.0),
    ],
)
def test_eta(earlier: Status, later: Status, eta: float | None) -> None:
    assert trend(earlier, later, 1.0).eta == eta


def test_history_compares_with_the_oldest_reading_in_the_window() -> None:
    history = History(window=10)
    assert history.add(0, status(rows=0)) is None
    assert history.add(5, status(rows=50)).write_rate == 10  # type: ignore[union-attr]
    assert history.add(9, status(rows=90)).write_rate == 10  # type: ignore[union-attr]
    # 0 drops out once the reading after it is a window old: from 5 to 15 now.
    t = history.add(15, status(rows=250))
    assert t is not None
    assert (t.seconds, t.write_rate) == (10, 20)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (0, "0s"), (0.2, "1s"), (59, "59s"), (61, "1m01s"), (3725, "1h02m")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_the_view_shows_depths_rates_consumers_eta_and_the_depth_source() -> None:
    earlier = status(fetch=1000, records=10, rows=100, retrying=3)
    later = status(fetch=600, records=30, rows=1_400, failed=7, dead=2, retrying=3, buffered=50,
                   in_flight=603)  # fmt: skip
    view = render(later, trend(earlier, later, 4.0), clock="12:00:00", expected=5000)
    lines = view.splitlines()
    assert lines[0] == "pipeline p  12:00:00"
    assert lines[2].split() == ["fetch", "queue", "600", "+100/s", "2", "fetchers"]
    assert lines[3].split()[:3] == ["delay", "queues", "3"]
    assert lines[4].split() == ["records", "queue", "30", "-5/s", "1", "writer"]
    assert lines[5].split() == ["dead", "letters", "2"]
    assert lines[6].split() == ["rows", "landed", "1,400", "338/s"]
    assert lines[7].split()[:3] == ["rows", "buffered", "50"]
    assert lines[8].split() == ["keys", "failed", "7", "2/s"]
    assert lines[9].split()[:4] == ["keys", "in", "flight", "603"]
    assert lines[10].split() == ["keys", "done", "1,457", "of", "5,000"]
    assert lines[11].split() == ["ETA", "to", "drain", "7s"]
    assert "passive declare" in lines[12]
    # The first reading has no rates yet, and a missing table says what to do.
    first = render(status(rows=None), None)
    assert "run `sluiceway migrate`" in first
    assert first.splitlines()[-2].split() == ["ETA", "to", "drain", "—"]


def test_the_json_document_names_its_sources_and_carries_rates_with_a_trend() -> None:
    later = status(fetch=600, dead=2, writers=3)
    doc = document(later, trend(status(fetch=700), later, 2.0), at=1.5)
    assert doc["pipeline"] == "p"
    assert doc["depth_source"].startswith("passive declare")
    assert (doc["dead"], doc["writers"], doc["fetchers"], doc["at"]) == (2, 3, 2, 1.5)
    assert doc["rates"] == {
        "seconds": 2.0, "fetch_drain": 50, "records_drain": 0, "write": 0, "failed": 0
    }  # fmt: skip
    assert doc["eta_seconds"] == 12
    assert "rates" not in document(later)


def test_rows_landed_in_a_sink_table_name_it_and_say_they_are_all_its_rows() -> None:
    landed = status(rows=1400, rows_table='"Analytics Data".users')
    assert render(landed, None).splitlines()[6].split()[:3] == ["rows", "landed", "1,400"]
    assert 'in "Analytics Data".users, the whole table' in render(landed, None)
    assert document(landed)["rows"] == 1400
    assert document(landed)["rows_table"] == '"Analytics Data".users'
    assert document(status())["rows_table"] == "records"
    missing = render(status(rows=None, rows_table="users"), None)
    assert "in users missing: create it" in missing
    assert "sluiceway migrate" not in missing
    assert '  rows landed   1,400 in "Analytics Data".users (the whole table)' in (
        show(landed).splitlines()
    )
    assert "sink table users missing: create it with your own migrations" in show(
        status(rows=None, rows_table="users")
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_screen_redraws_on_a_terminal_and_prints_plainly_elsewhere() -> None:
    piped, terminal = io.StringIO(), Terminal()
    for stream in (piped, terminal):
        screen = Screen(stream)
        screen.draw("one")
        screen.draw("two")
    assert piped.getvalue() == "one\n\ntwo\n\n"
    assert terminal.getvalue() == "\x1b[H\x1b[2Jone\n\x1b[H\x1b[2Jtwo\n"
