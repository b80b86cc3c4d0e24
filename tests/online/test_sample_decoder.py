"""The sample decoder (SampleBatch frames -> numpy columns) and the tables' id -> row map."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from streams.sample_batch import id_hash
from tests.online.synthetic import Sample, frame, raw_frame, samples
from trainer.growing_embedding import GrowingEmbedding, RowIndex
from trainer.sample_decoder import RecentKeys, SampleDecoder, record_samples

H = 4


def _decoder(window: int = 50, recent=()) -> SampleDecoder:
    return SampleDecoder(
        history_len=H,
        dedup_window=window,
        new_item_interactions=3,
        new_item_age_s=5.0,
        recent_keys=recent,
    )


def _columns(**changes) -> bytes:
    """A 2-sample frame with some columns replaced."""
    return raw_frame(samples(2, 2, 3), **changes)


BAD_FRAMES = {
    "garbage": b"not a frame",
    "tombstone": None,
    "nan ts": _columns(ts=np.array([1.0, np.nan])),
    "bad label": _columns(label=np.array([1, 3], np.int8)),
    "wrong dtype": _columns(user=np.array([1.0, 2.0], np.float64)),
    "short column": _columns(item=np.array([5], np.int64)),
}


def _stream() -> tuple[list[Sample], list[tuple[list, list[int]]]]:
    """(the samples, batches of (records, indices of the bad ones)): 60 samples in frames of
    5 with bad records, repeats (inside a batch, across batches, of the restored window)
    and an empty batch between."""
    data = samples(60, n_users=6, n_items=12)
    good = [frame(data[k : k + 5]) for k in range(0, 60, 5)]
    old_repeat = frame([data[0].but(sample_key=999)])
    mixed = frame([data[40].but(sample_key=998), data[3]])  # one new key, one repeat
    bad = list(BAD_FRAMES.values())
    return data, [
        (good[:4] + bad[:3], [4, 5, 6]),
        ([], []),
        ([bad[3], *good[4:8], good[1]], [0]),
        ([old_repeat, bad[4], mixed, bad[5]], [1, 3]),
        (good[8:] + [frame(data[50:52])], []),
    ]


def test_bad_frames_are_rejected_whole_with_a_reason():
    for name, raw in BAD_FRAMES.items():
        batch = _decoder().decode([raw])
        assert len(batch) == 0 and len(batch.rejected) == 1, name
        assert batch.rejected[0][0] == 0 and batch.rejected[0][1], name


def test_decoder_keeps_columns_repeats_and_rejections_straight():
    data, stream = _stream()
    by_key = {s.sample_key: s for s in data}
    by_key[998] = data[40]
    decoder = _decoder(recent=[999])
    kept: list[int] = []
    for records, bad in stream:
        batch = decoder.decode(records)
        assert [k for k, _ in batch.rejected] == bad
        assert all(reason for _, reason in batch.rejected)
        n = len(batch)
        assert batch.users.shape == (n,) and batch.history.shape == (n, H)
        assert batch.labels.dtype == np.float32 and batch.ts.dtype == np.float64
        kept += batch.keys.tolist()
        for j, key in enumerate(batch.keys.tolist()):
            s = by_key[key]
            assert batch.users[j] == id_hash(s.user) and batch.items[j] == id_hash(s.item)
            newest = s.history[-H:]
            want = [id_hash(i) for i in newest] + [0] * (H - len(newest))
            assert batch.history[j].tolist() == want
            assert batch.labels[j] == s.label and batch.ts[j] == s.ts
            young = s.item_age_s is not None and s.item_age_s < 5.0
            assert batch.is_new[j] == (s.item_interactions < 3 or young)
    assert len(kept) == len(set(kept)) == 61  # every good sample once (and key 998)
    assert 999 not in kept  # the restored window's key
    assert decoder.recent.keys().tolist()[-3:] == kept[-3:]


def test_history_is_cut_to_the_newest_or_padded_to_the_trainers_length():
    s = samples(1, 1, 1)[0].but(history=["a", "b", "c", "d", "e", "f"])
    hashes = [id_hash(i) for i in s.history]
    short = s.but(sample_key=1, history=["x"])
    for slots in (2, 4, 6, 8):
        batch = _decoder().decode([frame([s, short], history_len=slots)])
        newest = hashes[-min(slots, H) :]
        assert batch.history[0].tolist() == newest + [0] * (H - len(newest)), slots
        assert batch.history[1].tolist() == [id_hash("x"), 0, 0, 0], slots


def test_the_window_forgets_the_oldest_keys():
    recent = RecentKeys(4, [1, 2])
    assert recent.fresh(np.array([3, 4, 5])).all()  # 1 leaves the window
    assert recent.keys().tolist() == [2, 3, 4, 5]
    assert recent.fresh(np.array([1, 2, 5])).tolist() == [True, False, False]
    assert recent.keys().tolist() == [3, 4, 5, 1] and recent.seen == {1, 3, 4, 5}
    assert recent.fresh(np.arange(10, 20)).all()  # more than the window at once
    assert recent.keys().tolist() == [16, 17, 18, 19] and len(recent) == 4
    assert RecentKeys(3, range(10)).keys().tolist() == [7, 8, 9]
    with pytest.raises(ValueError):
        RecentKeys(0)


def test_record_samples_reads_the_frame_header_and_counts_a_bad_record_as_one():
    assert record_samples(frame(samples(7, 2, 3))) == 7
    assert record_samples(None) == 1 and record_samples(b"IDPF") == 1
    head = json.dumps({"header": {"count": "7"}}).encode()
    assert record_samples(b"IDPF" + struct.pack("<I", len(head)) + head) == 1


def test_row_index_gives_rows_in_first_appearance_order_and_keeps_them():
    index = RowIndex()
    ids = np.array([[30, 10], [0, 30], [20, 10]])
    assert index.rows(ids).tolist() == [[1, 2], [0, 1], [3, 2]]
    assert index.ids.tolist() == [30, 10, 20]
    many = np.arange(1000, 6000)[::-1]  # merged into the large arrays along the way
    rows = index.rows(many)
    assert rows.tolist() == list(range(4, 5004))
    assert index.find(np.array([10, 1000, 5999, 7, 0])).tolist() == [2, 5003, 4, 0, 0]
    assert np.array_equal(RowIndex(index.ids.tolist()).find(many), rows)
    with pytest.raises(ValueError):
        index.add(np.array([10]))
    with pytest.raises(ValueError):
        index.add(np.array([7, 7]))


def test_growing_table_restores_int_ids_only():
    t = GrowingEmbedding(dim=2, capacity=2)
    t.rows(np.array([id_hash("a"), id_hash("b")]))
    assert t.ids == [id_hash("a"), id_hash("b")] and t.capacity == 4
    clone = GrowingEmbedding(dim=2, capacity=2)
    clone.restore(t.ids, t.weight.detach(), t.counts)
    assert clone.index.find(np.array([id_hash("b")])).tolist() == [2]
    with pytest.raises(ValueError, match="int64 ids"):
        clone.restore(["a", "b"], t.weight.detach(), t.counts)


def test_value_checks_over_joined_frames_reject_what_each_frame_alone_would():
    data = samples(12, 3, 5)
    bad_label = np.array([1, 2, 0, 1], np.int8)
    records = [
        frame(data[0:4], history_len=2),
        raw_frame(data[4:8], label=bad_label),  # H = 20
        frame(data[8:10], history_len=6),
        frame(data[10:12]),  # H = 20
    ]
    batch = _decoder().decode(records)
    assert [k for k, _ in batch.rejected] == [1]
    assert batch.rejected[0][1] == "invalid samples batch: label not in {0, 1}"
    assert batch.keys.tolist() == [s.sample_key for s in data[:4] + data[8:]]  # record order
    for name, raw in BAD_FRAMES.items():  # each bad frame between good ones
        batch = _decoder().decode([frame(data[:3]), raw, frame(data[3:6])])
        assert [k for k, _ in batch.rejected] == [1] and len(batch) == 6, name
