"""Event schemas: strict parsing, clear reasons, binary frames (no broker needed)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import (
    Click,
    EventError,
    ItemUploaded,
    ProxyRecordEvent,
    decode_frame,
    encode_frame,
    parse_json,
    to_json,
)

VALID_CLICK = {"user_id": "u1", "item_id": "i1", "label": 1, "ts": 1.0}


def test_round_trip_and_defaults():
    click = parse_json(json.dumps(VALID_CLICK).encode(), Click)
    assert click.schema_version == 1
    assert parse_json(to_json(click), Click) == click


@pytest.mark.parametrize(
    "mutation,reason",
    [
        ({"label": 2}, "label"),
        ({"ts": "yesterday"}, "ts"),
        ({"extra": 1}, "Extra inputs"),
        ({"schema_version": 2}, "schema_version"),
        ({"user_id": ""}, "user_id"),
    ],
)
def test_bad_clicks_have_reasons(mutation, reason):
    with pytest.raises(EventError, match=reason):
        parse_json(json.dumps({**VALID_CLICK, **mutation}).encode(), Click)


def test_nan_timestamps_are_rejected():
    with pytest.raises(EventError, match="finite"):
        parse_json(b'{"user_id": "u", "item_id": "i", "label": 0, "ts": NaN}', Click)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parsers(raw):
    for model in (Click, ItemUploaded):
        try:
            parse_json(raw, model)
        except EventError as exc:
            assert str(exc)
    try:
        decode_frame(raw, ProxyRecordEvent)
    except EventError as exc:
        assert str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["item_id", "title", "text", "image_b64", "uploaded_at", "x"]), json_values
    )
)
def test_json_shaped_items_either_parse_or_give_a_reason(doc):
    try:
        event = parse_json(json.dumps(doc).encode(), ItemUploaded)
    except EventError as exc:
        assert str(exc).startswith("invalid ItemUploaded")
    else:
        assert event.item_id and event.title


def test_frames_reject_truncation_and_trailing_bytes():
    header = ProxyRecordEvent(
        item_id="1", proxy_version="p", encoder_version="e", uploaded_at=0, produced_at=0
    )
    frame = encode_frame(header, {"p_coarse": np.ones(4, np.float32)})
    assert decode_frame(frame, ProxyRecordEvent)[1]["p_coarse"].shape == (4,)
    with pytest.raises(EventError, match="truncated"):
        decode_frame(frame[:-2], ProxyRecordEvent)
    with pytest.raises(EventError, match="trailing"):
        decode_frame(frame + b"xx", ProxyRecordEvent)
    assert len(frame) < 200  # binary, not JSON floats
