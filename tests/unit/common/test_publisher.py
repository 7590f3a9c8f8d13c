"""The publisher's content header frames are pamqp's, byte for byte."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pamqp.frame
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.header import ContentHeader

from sluiceway_common.publisher import HeaderStamper

short = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
properties = st.builds(
    spec.Basic.Properties,
    content_type=st.none() | short,
    content_encoding=st.none() | st.sampled_from(["zstd", "gzip"]),
    headers=st.none() | st.dictionaries(short, st.integers(-(2**31), 2**31 - 1) | short),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | short,
    expiration=st.none() | st.integers(1, 10**9).map(str),
    timestamp=st.none() | st.just(datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),
    message_type=st.none() | short,
    app_id=st.none() | short,
)


@given(
    properties,
    st.integers(1, 65535),
    st.integers(0, 2**40),
    st.integers(1, 16**12 - 1),
    st.integers(1, 2**22 - 1),
)
def test_a_stamped_header_is_the_one_pamqp_marshals(
    props: spec.Basic.Properties, channel: int, body_size: int, counter: int, pid: int
) -> None:
    stamper = HeaderStamper(props, f"{pid:x}.0a1b2c3d.", channel)
    message_id = stamper.message_id(counter)
    assert message_id.endswith(f"{counter:012x}")
    expected = copy.copy(props)
    expected.message_id = message_id
    header = ContentHeader(0, body_size, expected)
    assert stamper.frame(body_size, message_id) == pamqp.frame.marshal(header, channel)


def test_the_properties_given_are_not_changed() -> None:
    props = spec.Basic.Properties(content_type="application/json", delivery_mode=2)
    HeaderStamper(props, "1.ab.", 1)
    assert props.message_id is None
