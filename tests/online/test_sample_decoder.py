"""The sample decoder: the same batches in the trainer's process and in its helper process."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from streams.events import to_json
from tests.online.synthetic import samples
from trainer.sample_decoder import (
    DecodedBatch,
    DecoderDied,
    DecoderProcess,
    DecoderState,
    SampleDecoder,
    decode_records,
    encode_records,
)

STATE = DecoderState(
    history_len=4,
    dedup_window=50,
    new_item_interactions=3,
    new_item_age_s=0.0,
    user_ids=["u0"],
    item_ids=["0", "1"],
    recent_ids=["s/old"],
)


def _batches() -> list[tuple[list[bytes | None], list[int]]]:
    """(records, indices of the bad ones): 60 good samples with bad records, a tombstone,
    repeats (of this stream and of the restored recent ids) and an empty batch between."""
    data = samples(60, n_users=6, n_items=12)
    good = [to_json(s) for s in data]
    repeat_of_old = to_json(data[0].model_copy(update={"sample_id": "s/old"}))
    bad = [b"not json", b"\xff{", b'{"sample_id": "s", "label": 3}', None, b"[]"]
    return [
        (good[:20] + bad[:3], [20, 21, 22]),
        ([], []),
        ([bad[3], *good[20:40], good[5]], [0]),
        ([repeat_of_old, bad[4]], [1]),
        (good[40:], []),
    ]


def _equal(a: DecodedBatch, b: DecodedBatch) -> None:
    for name, _ in DecodedBatch._ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("sample_ids", "new_user_ids", "new_item_ids", "rejected"):
        assert getattr(a, name) == getattr(b, name), name


def test_records_frame_round_trip_keeps_tombstones_and_empty_values():
    values = [b"a", None, b"", "é".encode(), b"\x00" * 3]
    assert decode_records(bytearray(encode_records(values))) == values
    assert decode_records(bytearray(encode_records([]))) == []


def test_process_and_inline_decoders_give_the_same_batches():
    inline, child = SampleDecoder(STATE), DecoderProcess(STATE)
    try:
        for values, _ in _batches():
            inline.submit(values)
            child.submit(values)
            a, b = inline.collect(), child.collect()
            _equal(a, b)
            _equal(a, DecodedBatch.from_bytes(bytearray(a.to_bytes()), STATE.history_len))
    finally:
        child.close()
    assert child.proc.returncode == 0  # it exits when its input closes


def test_decoder_keeps_rows_repeats_and_rejections_straight():
    decoder = SampleDecoder(STATE)
    by_id = {s.sample_id: s for s in samples(60, n_users=6, n_items=12)}
    seen_users, seen_items = list(STATE.user_ids), list(STATE.item_ids)
    kept: list[str] = []
    for values, bad in _batches():
        decoder.submit(values)
        batch = decoder.collect()
        seen_users += batch.new_user_ids
        seen_items += batch.new_item_ids
        kept += batch.sample_ids
        n = len(batch.sample_ids)
        assert batch.users.shape == (n,) and batch.history.shape == (n, STATE.history_len)
        for j, sid in enumerate(batch.sample_ids):  # row r holds id r-1 of the row plan
            sample = by_id[sid]
            assert seen_users[batch.users[j] - 1] == sample.user_id
            assert seen_items[batch.items[j] - 1] == sample.item_id
            hist = [seen_items[r - 1] for r in batch.history[j] if r]
            assert hist == sample.history[-STATE.history_len :]
            assert batch.labels[j] == sample.label and batch.ts[j] == sample.ts
            assert batch.is_new[j] == (sample.item_interactions < STATE.new_item_interactions)
        assert [k for k, _ in batch.rejected] == bad
        assert all(reason for _, reason in batch.rejected)
    assert len(kept) == len(set(kept)) == 60  # every good sample once; repeats dropped
    assert "s/old" not in kept
    assert len(seen_items) == len(set(seen_items))


def test_one_batch_in_flight_and_a_clear_error_when_the_child_dies():
    child = DecoderProcess(STATE)
    try:
        with pytest.raises(RuntimeError, match="no batch in flight"):
            child.collect()
        child.submit([b"x"])
        with pytest.raises(RuntimeError, match="already in flight"):
            child.submit([b"y"])
        assert child.collect().rejected[0][0] == 0
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()
        with pytest.raises(DecoderDied, match="exit code -9"):
            child.submit([b"z"])
            child.collect()
    finally:
        child.close()


def test_child_ignores_sigterm_and_sigint():
    """A Ctrl-C or SIGTERM to the process group must not kill the decoder under a trainer
    that is finishing its batch; it ends when the trainer closes its input."""
    child = DecoderProcess(STATE)
    try:
        child.proc.send_signal(signal.SIGTERM)
        child.proc.send_signal(signal.SIGINT)
        child.submit([to_json(samples(1, 1, 1)[0])])
        assert len(child.collect().sample_ids) == 1
    finally:
        child.close()
    assert child.proc.returncode == 0
