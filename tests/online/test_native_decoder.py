"""The compiled sample decoder (native/): its strict form is a subset of what pydantic accepts,
with the same values, and a batch outside it takes the Python path to the same result."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from idproxy_native import RowDecoder, in_dump_layout, strict_error

from streams.events import TrainingSample, parse_json, to_json
from tests.online.synthetic import samples
from tests.online.test_sample_decoder import STATE, _equal
from tests.streams.test_fast_decode import VALID, json_values, mutated_records
from trainer.sample_decoder import SampleDecoder

H = 50  # history_len of the one-record decodes: long enough to keep every history id


def _one(raw: bytes) -> dict | None:
    """One record through a fresh RowDecoder -> its values, or None if it was refused."""
    rows = RowDecoder(H, 10, 3, 60.0, [], [], [])
    columns = rows.decode([raw])
    if columns is None:
        return None
    sample_ids, _, items, history, labels, is_new, ts, new_users, new_items = columns
    row_ids = new_items  # a fresh decoder: row r holds new_items[r - 1]
    history_rows = np.frombuffer(history, "<i8").tolist()
    return {
        "sample_id": sample_ids[0],
        "user_id": new_users[0],
        "item_id": row_ids[int(np.frombuffer(items, "<i8")[0]) - 1],
        "history": [row_ids[r - 1] for r in history_rows if r],
        "label": float(np.frombuffer(labels, "<f4")[0]),
        "ts": float(np.frombuffer(ts, "<f8")[0]),
        "is_new": bool(is_new[0]),
    }


def _expected(sample: TrainingSample) -> dict:
    young = sample.item_age_s is not None and sample.item_age_s < 60.0
    return {
        "sample_id": sample.sample_id,
        "user_id": sample.user_id,
        "item_id": sample.item_id,
        "history": sample.history,
        "label": float(sample.label),
        "ts": sample.ts,
        "is_new": sample.item_interactions < 3 or young,
    }


@settings(max_examples=400, deadline=None)
@given(raw=mutated_records(st.integers() | json_values))  # unbounded ints: past int64/uint64
def test_what_the_strict_form_takes_pydantic_takes_with_the_same_values(raw):
    taken = _one(raw)
    assert (taken is None) == (strict_error(raw) is not None)
    if taken is not None:
        assert taken == _expected(parse_json(raw, TrainingSample))


finite = st.floats(allow_nan=False, allow_infinity=False)
dumped_samples = st.builds(
    TrainingSample,
    sample_id=st.text(max_size=8),
    user_id=st.text(max_size=8),
    item_id=st.text(max_size=8),
    label=st.sampled_from([0, 1]),
    ts=finite | st.integers(-(2**70), 2**70),
    history=st.lists(st.text(max_size=4), max_size=25),
    item_interactions=st.integers(0, 2**64 - 1),
    item_age_s=st.none() | finite,
    item_known=st.booleans(),
    context=st.just({}) | st.dictionaries(st.text(max_size=2), st.integers() | finite, max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(sample=dumped_samples)
def test_what_pydantic_writes_decodes_to_its_values(sample):
    raw = to_json(sample)
    assert _one(raw) == _expected(parse_json(raw, TrainingSample))


@settings(max_examples=600, deadline=None)
@given(
    sample=dumped_samples,
    at=st.floats(0, 1, exclude_max=True),
    byte=st.sampled_from(b'"\\:,.{}[]-+eE019 \x00\xff'),
    how=st.sampled_from(["replace", "insert", "delete"]),
)
def test_a_damaged_dump_is_taken_only_as_pydantic_takes_it(sample, at, byte, how):
    raw = bytearray(to_json(sample))
    k = int(at * len(raw))
    if how == "replace":
        raw[k] = byte
    elif how == "insert":
        raw.insert(k, byte)
    else:
        del raw[k]
    raw = bytes(raw)
    taken = _one(raw)
    if taken is not None:
        assert taken == _expected(parse_json(raw, TrainingSample))


def test_what_the_processor_writes_takes_the_hand_parser():
    records = [to_json(s) for s in samples(50, n_users=5, n_items=9)]
    assert all(in_dump_layout(r) for r in records)
    assert not in_dump_layout(json.dumps(json.loads(records[0])).encode())  # spaces: serde
    assert strict_error(json.dumps(json.loads(records[0])).encode()) is None


def test_escapes_unicode_and_exponents_keep_their_values():
    raw = (
        b'{"sample_id":"c/0/1","user_id":"u\\u00e9\\n","item_id":"\xc3\xa9","label":0,'
        b'"ts":1.5e3,"history":["a\\"b","\\ud83d\\ude00"],"item_interactions":7,'
        b'"item_age_s":null,"item_known":false,"context":{"x":-2,"y":"z","w":1e-3}}'
    )
    assert strict_error(raw) is None
    assert _one(raw) == _expected(parse_json(raw, TrainingSample))


def test_a_batch_with_a_bad_record_decodes_like_the_strict_batch_without_it():
    good = [to_json(s) for s in samples(80, n_users=6, n_items=12)]
    assert all(strict_error(v) is None for v in good)  # what the processor writes is strict
    fast, slow = SampleDecoder(STATE), SampleDecoder(STATE)
    for k in range(0, len(good), 20):
        part = good[k : k + 20]
        a = fast.decode(part)
        b = slow.decode([*part, None])  # a tombstone sends the batch down the Python path
        assert b.rejected == [(20, "empty message (tombstone)")]
        b.rejected = []
        _equal(a, b)


def test_lax_records_are_accepted_via_pydantic_and_out_of_range_ones_rejected():
    lax = json.dumps(VALID | {"ts": "5", "item_interactions": 2.0}).encode()
    huge = json.dumps(VALID | {"sample_id": "c/0/2", "item_interactions": 2**64}).encode()
    assert strict_error(lax) and strict_error(huge)
    assert parse_json(huge, TrainingSample).item_interactions == 2**64  # pydantic takes it
    batch = SampleDecoder(STATE).decode([lax, huge])
    assert batch.sample_ids == [VALID["sample_id"]]
    assert batch.ts.tolist() == [5.0] and batch.is_new.tolist() == [True]
    [(index, reason)] = batch.rejected
    assert index == 1 and reason.startswith("TrainingSample out of the trainer's range:")


def test_a_repeat_outside_the_dedup_window_is_kept_again():
    decoder = SampleDecoder(STATE.model_copy(update={"dedup_window": 2, "recent_ids": []}))
    records = [to_json(s) for s in samples(3, n_users=2, n_items=4)]
    ids = [json.loads(r)["sample_id"] for r in records]
    assert decoder.decode(records).sample_ids == ids  # the window now holds ids 1 and 2
    assert decoder.decode([records[0], records[2]]).sample_ids == [ids[0]]


def test_tombstones_and_non_bytes_are_refused_without_changing_state():
    rows = RowDecoder(4, 10, 3, 0.0, ["u0"], [], ["s/old"])
    good = to_json(samples(1, n_users=1, n_items=2)[0])
    assert rows.decode([good, None]) is None
    assert rows.decode([good, "text"]) is None
    assert rows.decode([good])[0] == [json.loads(good)["sample_id"]]  # not taken before
