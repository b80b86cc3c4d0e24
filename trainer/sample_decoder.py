"""TrainingSample records -> row arrays for the online trainer, in its process or beside it.

The trainer's per-sample Python work is: decode and validate the JSON (the compiled decoder
of ``streams.fast_decode``), drop repeats by ``sample_id``, and look up the table rows of
the user, the target item and up to ``history_len`` history items (~20 string hashes and
dict look-ups per sample). On MovieLens-100K sizes that costs about a third of the id-only
ranker's own training step. :class:`SampleDecoder` does this work for a batch and returns
plain numpy arrays (:class:`DecodedBatch`); it imports neither torch nor Kafka.

Two ways to run it, with the same ``submit(values)`` / ``collect()`` interface, one batch in
flight at a time:

* :class:`InlineDecoder` — in the trainer's process (tests, single-core machines);
* :class:`DecoderProcess` — in a child process (``python -m trainer.sample_decoder``), so
  on a machine with a second core the trainer trains batch k while batch k+1 is decoded.
  The two talk over pipes with length-prefixed binary frames (no pickle): the child's
  start-up state as JSON (:class:`DecoderState`), answered by an empty frame once it is
  ready; then per batch the raw record values in, and a JSON header plus raw
  little-endian arrays out. The child ignores SIGINT/SIGTERM
  and exits when its stdin closes, so a trainer that stops or is SIGKILLed takes it along.

**Row plan.** The decoder owns the id -> row index of the user and item tables. An unknown
id takes the next free row, in a fixed order (users in sample order; items: the targets in
sample order, then the history ids), and the batch lists the ids it added
(``new_user_ids``, ``new_item_ids``). The trainer appends them to its tables
(``GrowingEmbedding.add``) before it uses the rows, so both indexes stay equal. A restarted
trainer starts a decoder from its checkpoint's id lists and recent sample ids, so the
decoder's state never runs ahead of the model's.

>>> d = SampleDecoder(DecoderState(history_len=3, dedup_window=10, new_item_interactions=5,
...                                new_item_age_s=0.0))
>>> raw = (b'{"sample_id":"c/0/%d","user_id":"u1","item_id":"%s","label":1,"ts":5,'
...        b'"history":%s,"item_interactions":%d,"item_known":true}')
>>> b = d.decode([raw % (1, b"a", b'["b","c"]', 0), b"not json", raw % (1, b"a", b"[]", 0),
...               raw % (2, b"c", b'["b"]', 9)])
>>> b.sample_ids, b.new_user_ids, b.new_item_ids   # the repeat of c/0/1 is dropped
(['c/0/1', 'c/0/2'], ['u1'], ['a', 'c', 'b'])
>>> b.users.tolist(), b.items.tolist(), b.history.tolist()
([1, 1], [1, 2], [[3, 2, 0], [3, 0, 0]])
>>> b.labels.tolist(), b.is_new.tolist(), [k for k, _ in b.rejected]
([1.0, 1.0], [True, False], [1])
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, islice
from operator import attrgetter
from typing import BinaryIO, Protocol

import numpy as np
from pydantic import BaseModel, Field

from streams.events import EventError, TrainingSample
from streams.fast_decode import fast_decoder

_LENGTH = struct.Struct("<Q")  # a frame's payload length
_COUNT = struct.Struct("<I")


class DecoderState(BaseModel):
    """What a decoder starts from: its settings and the tables' ids in row order."""

    history_len: int = Field(ge=1, description="history items kept per sample (the newest)")
    dedup_window: int = Field(ge=1, description="recent sample ids remembered for repeats")
    new_item_interactions: int = Field(ge=0, description="tau: new while interactions < tau")
    new_item_age_s: float = Field(description="... or while younger than this (s)")
    user_ids: list[str] = Field(default_factory=list, description="row r holds user_ids[r-1]")
    item_ids: list[str] = Field(default_factory=list)
    recent_ids: list[str] = Field(default_factory=list, description="oldest first")


@dataclass
class DecodedBatch:
    """The kept samples of one batch of records, as rows (n = kept samples, h = history_len).

    users, items int64 [n]; history int64 [n, h] (left-aligned, oldest first, 0 = pad);
    labels float32 [n]; is_new bool [n]; ts float64 [n] (s); sample_ids [n];
    new_user_ids / new_item_ids: ids given rows in this batch, in row order;
    rejected: (index in the submitted records, reason) of the records that did not decode.
    """

    users: np.ndarray
    items: np.ndarray
    history: np.ndarray
    labels: np.ndarray
    is_new: np.ndarray
    ts: np.ndarray
    sample_ids: list[str]
    new_user_ids: list[str]
    new_item_ids: list[str]
    rejected: list[tuple[int, str]]

    _ARRAYS = (("users", np.int64), ("items", np.int64), ("history", np.int64),
               ("labels", np.float32), ("is_new", np.bool_), ("ts", np.float64))  # fmt: skip

    def to_bytes(self) -> bytes:
        """u32 header length | JSON header (ids, rejections) | the arrays, raw."""
        header = json.dumps(
            {
                "sample_ids": self.sample_ids,
                "new_user_ids": self.new_user_ids,
                "new_item_ids": self.new_item_ids,
                "rejected": self.rejected,
            }
        ).encode()
        parts = [_COUNT.pack(len(header)), header]
        parts += [np.ascontiguousarray(getattr(self, name), dtype).tobytes()
                  for name, dtype in self._ARRAYS]  # fmt: skip
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, frame: bytearray, history_len: int) -> DecodedBatch:
        """Inverse of :meth:`to_bytes`; the arrays are writable views of ``frame``."""
        (size,) = _COUNT.unpack_from(frame)
        header = json.loads(frame[_COUNT.size : _COUNT.size + size])
        n = len(header["sample_ids"])
        at = _COUNT.size + size
        arrays = {}
        for name, dtype in cls._ARRAYS:
            count = n * history_len if name == "history" else n
            arrays[name] = np.frombuffer(frame, dtype, count, at)
            at += count * np.dtype(dtype).itemsize
        if at != len(frame):
            raise ValueError(f"decoded-batch frame of {len(frame)} bytes, expected {at}")
        arrays["history"] = arrays["history"].reshape(n, history_len)
        rejected = [(int(k), str(reason)) for k, reason in header["rejected"]]
        return cls(
            **arrays,
            sample_ids=header["sample_ids"],
            new_user_ids=header["new_user_ids"],
            new_item_ids=header["new_item_ids"],
            rejected=rejected,
        )


class RecentIds:
    """A bounded set of recent sample ids (FIFO eviction) for de-duplication."""

    def __init__(self, size: int, ids: Sequence[str] = ()) -> None:
        self.order: deque[str] = deque(ids, maxlen=size)  # the newest ``size`` ids
        self.members: set[str] = set(self.order)

    def keep_new(self, samples: list) -> list:
        """The samples whose ``sample_id`` is not here yet (in order); adds their ids.

        The usual batch (no repeats, smaller than the window) takes set operations only.
        """
        order, members, size = self.order, self.members, self.order.maxlen
        ids = list(map(_SAMPLE_ID, samples))
        if len(ids) <= size and members.isdisjoint(ids) and len(set(ids)) == len(ids):
            evicted = len(order) + len(ids) - size
            if evicted > 0:
                members.difference_update(islice(order, evicted))
            order.extend(ids)
            members.update(ids)
            return samples
        fresh = []
        for s, sid in zip(samples, ids, strict=True):
            if sid in members:
                continue
            if len(order) == size:
                members.discard(order[0])
            order.append(sid)
            members.add(sid)
            fresh.append(s)
        return fresh


def _rows(index: dict[str, int], ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """ids -> (rows int64 [len(ids)], the ids that took new rows, in order); grows ``index``."""
    try:  # the usual batch: every id has a row already
        return np.fromiter(map(index.__getitem__, ids), np.int64, len(ids)), []
    except KeyError:
        pass
    added: list[str] = []
    for i in ids:
        if i not in index:
            added.append(i)
            index[i] = len(index) + 1
    return np.fromiter(map(index.__getitem__, ids), np.int64, len(ids)), added


class SampleDecoder:
    """Records (bytes, or None for a tombstone) -> :class:`DecodedBatch`."""

    def __init__(self, state: DecoderState) -> None:
        self.history_len = state.history_len
        self.tau = state.new_item_interactions
        self.max_age = state.new_item_age_s
        self.decode_one = fast_decoder(TrainingSample)
        self.recent = RecentIds(state.dedup_window, state.recent_ids)
        self.users = {u: r for r, u in enumerate(state.user_ids, 1)}
        self.items = {i: r for r, i in enumerate(state.item_ids, 1)}

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        decoded, rejected = [], []
        decode_one = self.decode_one
        for k, value in enumerate(values):
            try:
                decoded.append(decode_one(value))
            except EventError as exc:
                rejected.append((k, str(exc)))
        samples = self.recent.keep_new(decoded)
        h, n = self.history_len, len(samples)
        if not n:
            return _empty_batch(h, rejected)
        # columns by C-level iteration (attrgetter + zip) instead of a Python loop
        sample_ids, user_ids, item_ids, hists, labels, interactions, ages, ts = zip(
            *map(_COLUMNS, samples), strict=True
        )
        lengths = np.fromiter(map(len, hists), np.int64, n)
        if lengths.max() > h:  # keep the newest h
            hists = [x[-h:] for x in hists]
            lengths = np.minimum(lengths, h)
        users, new_users = _rows(self.users, user_ids)
        rows, new_items = _rows(self.items, [*item_ids, *chain.from_iterable(hists)])
        history = np.zeros((n, h), np.int64)
        history[np.arange(h) < lengths[:, None]] = rows[n:]  # targets first, then histories
        age = np.array(ages, np.float64)  # None -> NaN, which is never < max_age
        return DecodedBatch(
            users=users,
            items=rows[:n],
            history=history,
            labels=np.array(labels, np.float32),
            is_new=(np.array(interactions) < self.tau) | (age < self.max_age),
            ts=np.array(ts, np.float64),
            sample_ids=list(sample_ids),
            new_user_ids=new_users,
            new_item_ids=new_items,
            rejected=rejected,
        )


_SAMPLE_ID = attrgetter("sample_id")
_COLUMNS = attrgetter(
    "sample_id", "user_id", "item_id", "history", "label", "item_interactions", "item_age_s", "ts"
)


def _empty_batch(history_len: int, rejected: list[tuple[int, str]]) -> DecodedBatch:
    rows = np.zeros(0, np.int64)
    return DecodedBatch(
        users=rows,
        items=rows,
        history=np.zeros((0, history_len), np.int64),
        labels=np.zeros(0, np.float32),
        is_new=np.zeros(0, bool),
        ts=np.zeros(0, np.float64),
        sample_ids=[],
        new_user_ids=[],
        new_item_ids=[],
        rejected=rejected,
    )


class Decoder(Protocol):
    """submit(values) then collect() -> DecodedBatch; one batch in flight; close()."""

    def submit(self, values: list[bytes | None]) -> None: ...
    def collect(self) -> DecodedBatch: ...
    def close(self) -> None: ...


class InlineDecoder:
    """A :class:`SampleDecoder` in the caller's process (decodes at ``collect``)."""

    def __init__(self, state: DecoderState) -> None:
        self.decoder = SampleDecoder(state)
        self.values: list[bytes | None] | None = None

    def submit(self, values: list[bytes | None]) -> None:
        if self.values is not None:
            raise RuntimeError("a batch is already in flight: collect() it first")
        self.values = values

    def collect(self) -> DecodedBatch:
        if self.values is None:
            raise RuntimeError("no batch in flight")
        values, self.values = self.values, None
        return self.decoder.decode(values)

    def close(self) -> None:
        self.values = None


class DecoderDied(RuntimeError):
    """The decoder process exited or broke the protocol (its traceback is on stderr)."""


def _write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytearray | None:
    """``size`` bytes, or None at end of stream before the first byte."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            if got == 0:
                return None
            raise EOFError(f"stream ended after {got} of {size} bytes")
        got += n
    return buf


def _read_frame(stream: BinaryIO) -> bytearray | None:
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    frame = _read_exactly(stream, size)  # bytearray() when size is 0
    if frame is None:
        raise EOFError("stream ended inside a frame")
    return frame


def encode_records(values: Sequence[bytes | None]) -> bytes:
    """u32 count | int64 lengths (-1 = None) | the values, concatenated."""
    lengths = array("q", [-1 if v is None else len(v) for v in values])
    body = b"".join(v for v in values if v is not None)
    return _COUNT.pack(len(values)) + lengths.tobytes() + body


def decode_records(frame: bytearray) -> list[bytes | None]:
    """Inverse of :func:`encode_records`."""
    (count,) = _COUNT.unpack_from(frame)
    lengths = np.frombuffer(frame, np.int64, count, _COUNT.size).tolist()
    at = _COUNT.size + 8 * count
    values: list[bytes | None] = []
    for size in lengths:
        if size < 0:
            values.append(None)
        else:
            values.append(bytes(frame[at : at + size]))
            at += size
    return values


class DecoderProcess:
    """A :class:`SampleDecoder` in a child process: ``python -m trainer.sample_decoder``."""

    def __init__(self, state: DecoderState) -> None:
        self.history_len = state.history_len
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.sample_decoder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.in_flight = False
        self._send(state.model_dump_json().encode())
        if self._receive("did not start") is None:
            raise self._died("did not start")

    def _receive(self, what: str) -> bytearray | None:
        try:
            return _read_frame(self.proc.stdout)
        except EOFError as exc:
            raise self._died(f"{what} ({exc})") from exc

    def _died(self, what: str) -> DecoderDied:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return DecoderDied(f"sample decoder process {what} (exit code {code}); see its stderr")

    def _send(self, payload: bytes) -> None:
        try:
            _write_frame(self.proc.stdin, payload)
        except (BrokenPipeError, OSError) as exc:
            raise self._died(f"stopped taking input ({exc})") from exc

    def submit(self, values: list[bytes | None]) -> None:
        if self.in_flight:
            raise RuntimeError("a batch is already in flight: collect() it first")
        self._send(encode_records(values))
        self.in_flight = True

    def collect(self) -> DecodedBatch:
        if not self.in_flight:
            raise RuntimeError("no batch in flight")
        frame = self._receive("broke off a reply")
        if frame is None:
            raise self._died("exited")
        self.in_flight = False
        return DecodedBatch.from_bytes(frame, self.history_len)

    def close(self) -> None:
        """Closes its stdin (the child exits); kills it if it does not within 5 s."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def open_decoder(kind: str, state: DecoderState) -> Decoder:
    """``"process"`` -> :class:`DecoderProcess`, ``"inline"`` -> :class:`InlineDecoder`."""
    if kind == "process":
        return DecoderProcess(state)
    if kind == "inline":
        return InlineDecoder(state)
    raise ValueError(f"unknown sample decoder {kind!r} (process or inline)")


def main() -> None:
    """The child: a DecoderState frame, then records frames in, DecodedBatch frames out."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the trainer decides when this ends
        signal.signal(sig, signal.SIG_IGN)
    reply = os.fdopen(os.dup(1), "wb")  # the protocol's own stdout; stray prints -> stderr
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    first = _read_frame(requests)
    if first is None:
        return
    decoder = SampleDecoder(DecoderState.model_validate_json(first))
    _write_frame(reply, b"")  # ready
    while (frame := _read_frame(requests)) is not None:
        _write_frame(reply, decoder.decode(decode_records(frame)).to_bytes())


if __name__ == "__main__":
    main()
