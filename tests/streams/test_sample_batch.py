"""The ``samples`` contract (``streams/sample_batch.py``): round trip, and every way a frame
can break the contract is an EventError with a reason (the trainer dead-letters it)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from streams.events import EventError, encode_frame
from streams.sample_batch import (
    COLUMNS,
    SampleBatch,
    SampleBatchHeader,
    id_hash,
    id_hashes,
    sample_key,
)


def _batch(n: int = 4, history_len: int = 3) -> SampleBatch:
    rows = [
        dict(
            sample_key=sample_key(1, 100 + k),
            user=f"u{k % 2}",
            item=str(k),
            label=k % 2,
            ts=1000.0 + k,
            history=[str(j) for j in range(k)],
            item_interactions=k,
            item_age_s=None if k == 0 else 2.5 * k,
            item_known=k != 0,
        )
        for k in range(n)
    ]
    return SampleBatch.from_rows(rows, history_len)


def test_round_trip_keeps_every_column_bit_for_bit():
    batch = _batch()
    back = SampleBatch.decode(batch.encode())
    for name in COLUMNS:
        got, want = getattr(back, name), getattr(batch, name)
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), name
    assert back.history_count.tolist() == [0, 1, 2, 3]
    assert back.history[3].tolist() == id_hashes(["0", "1", "2"]).tolist()
    assert back.sample_key[0] == (1 << 40) + 100


def test_ids_are_stable_signed_64_bit_hashes_never_zero():
    assert id_hash("42") == id_hash("42") != id_hash("43")
    assert -(2**63) <= id_hash("u1") < 2**63
    assert id_hashes(["a", "b"]).dtype == np.int64
    digest = hashlib.blake2b(b"42", digest_size=8).digest()  # the documented definition
    assert id_hash("42") == int.from_bytes(digest, "little", signed=True)


def test_a_long_history_keeps_its_most_recent_items():
    rows = [dict(sample_key=1, user="u", item="i", label=0, ts=1.0, history=list("abcdef"),
                 item_interactions=0, item_age_s=0.0, item_known=True)]  # fmt: skip
    batch = SampleBatch.from_rows(rows, history_len=2)
    assert batch.history[0].tolist() == id_hashes(["e", "f"]).tolist()


def _with(batch: SampleBatch, **columns) -> bytes:
    return dataclasses.replace(batch, **columns).encode()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: _with(b, label=np.array([0, 1, 2, 1], np.int8)), "label"),
        (lambda b: _with(b, ts=np.array([1, np.nan, 1, 1], np.float64)), "non-finite ts"),
        (lambda b: _with(b, item_interactions=np.array([0, -1, 0, 0], np.int32)), "negative"),
        (lambda b: _with(b, item_age_s=np.array([np.inf, 0, 0, 0], np.float32)), "item_age_s"),
        (lambda b: _with(b, history_count=np.array([0, 1, 2, 4], np.int8)), "history_count"),
        (lambda b: _with(b, history_count=np.array([0, 0, 2, 3], np.int8)), "padding"),
        (lambda b: _with(b, user=np.array([0, 1, 2, 3], np.int64)), "zero user"),
        (lambda b: b.encode()[:-3], "truncated"),
        (lambda b: b.encode() + b"x", "trailing"),
        (lambda b: b"not a frame", "not an IDPF"),
        (lambda b: None, "not an IDPF"),
    ],
)
def test_a_broken_frame_is_an_event_error_with_its_reason(change, reason):
    with pytest.raises(EventError, match=reason):
        SampleBatch.decode(change(_batch()))


def test_wrong_columns_dtypes_shapes_and_counts_are_refused():
    batch = _batch()
    arrays = {name: getattr(batch, name) for name in COLUMNS}
    header = SampleBatchHeader(count=4, history_len=3)
    with pytest.raises(EventError, match="columns"):
        SampleBatch.decode(encode_frame(header, {**arrays, "extra": np.zeros(4)}, COLUMNS))
    wrong = {**COLUMNS, "ts": "<f4"}
    with pytest.raises(EventError, match="'ts'"):
        SampleBatch.decode(encode_frame(header, arrays, wrong))
    with pytest.raises(EventError, match="'user'"):
        bad = {**arrays, "user": arrays["user"][:3]}
        SampleBatch.decode(encode_frame(header, bad, COLUMNS))
    too_many = header.model_copy(update={"count": 10**6})
    with pytest.raises(EventError):
        SampleBatch.decode(encode_frame(too_many, arrays, COLUMNS))
