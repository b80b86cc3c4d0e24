"""TrainingSample records -> row arrays for the online trainer, in its process or beside it.

The trainer's per-sample work before its training step is: decode and validate the JSON,
drop repeats by ``sample_id``, and look up the table rows of the user, the target item and
up to ``history_len`` history items (~22 ids per sample). In CPython that cost about a
quarter of the id-only ranker's own step (each id a fresh string, hashed and looked up),
so :class:`SampleDecoder` does it in the compiled ``idproxy_native`` module (``native/``,
Rust) for batches in the strict JSON form, and keeps the pydantic schema as the judge of
every other record. It returns plain numpy arrays (:class:`DecodedBatch`); it imports
neither torch nor Kafka.

Two ways to run it, with the same ``submit(values)`` / ``collect()`` interface, one batch in
flight at a time:

* :class:`SampleDecoder` itself — in the trainer's process (the default);
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import msgspec
import numpy as np
from pydantic import BaseModel, Field

from streams.events import EventError, TrainingSample
from streams.fast_decode import fast_decoder

try:
    from idproxy_native import RowDecoder, strict_error
except ImportError as exc:
    raise ImportError(
        "the trainer's compiled sample decoder (idproxy_native) is not installed:"
        " run `make setup`, which builds native/ with cargo"
    ) from exc

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


class SampleDecoder:
    """Records (bytes, or None for a tombstone) -> :class:`DecodedBatch`.

    The compiled :class:`idproxy_native.RowDecoder` (``native/``) holds the state (the id
    -> row maps, the recent sample ids) and decodes a batch whose records are all in
    TrainingSample's *strict* JSON form (exact JSON types, no unknown fields) — what the
    stream processor writes. A batch with any other record (malformed, a tombstone, or lax
    such as ``"ts": "5"``) takes the Python path: each record goes through the pydantic
    schema (:func:`streams.fast_decode.fast_decoder`), a bad one is rejected with
    pydantic's reason, and a good one is re-encoded in the strict form; the compiled
    decoder then takes those. So a record is accepted exactly when pydantic accepts it.
    """

    def __init__(self, state: DecoderState) -> None:
        self.history_len = state.history_len
        self.decode_one = fast_decoder(TrainingSample)
        self.rows = RowDecoder(
            state.history_len,
            state.dedup_window,
            state.new_item_interactions,
            state.new_item_age_s,
            state.user_ids,
            state.item_ids,
            state.recent_ids,
        )
        self.values: list[bytes | None] | None = None  # the batch in flight

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        values, rejected = list(values), []
        columns = self.rows.decode(values)
        if columns is None:  # a record is not in the strict form: the Python path
            strict, rejected = self._strict_forms(values)
            columns = self.rows.decode(strict)
        sample_ids, users, items, history, labels, is_new, ts, new_users, new_items = columns
        n, i8 = len(sample_ids), np.dtype("<i8")
        return DecodedBatch(
            users=np.frombuffer(users, i8),
            items=np.frombuffer(items, i8),
            history=np.frombuffer(history, i8).reshape(n, self.history_len),
            labels=np.frombuffer(labels, "<f4"),
            is_new=np.frombuffer(is_new, np.bool_),
            ts=np.frombuffer(ts, "<f8"),
            sample_ids=sample_ids,
            new_user_ids=new_users,
            new_item_ids=new_items,
            rejected=rejected,
        )

    # the Decoder interface, in the caller's process: decodes at collect()
    def submit(self, values: list[bytes | None]) -> None:
        if self.values is not None:
            raise RuntimeError("a batch is already in flight: collect() it first")
        self.values = values

    def collect(self) -> DecodedBatch:
        if self.values is None:
            raise RuntimeError("no batch in flight")
        values, self.values = self.values, None
        return self.decode(values)

    def close(self) -> None:
        self.values = None

    def _strict_forms(self, values: list[bytes | None]) -> tuple[list[bytes], list]:
        """-> (the accepted records re-encoded in the strict form, (index, reason) of the rest)."""
        strict, rejected = [], []
        for k, value in enumerate(values):
            try:
                sample = self.decode_one(value)
            except EventError as exc:
                rejected.append((k, str(exc)))
                continue
            if isinstance(sample, msgspec.Struct):
                form = msgspec.json.encode(sample)
            else:  # accepted by pydantic's lax mode only
                form = sample.model_dump_json().encode()
            reason = strict_error(form)  # values pydantic takes but int64/float64 cannot
            if reason is None:
                strict.append(form)
            else:
                rejected.append((k, f"TrainingSample out of the trainer's range: {reason}"))
        return strict, rejected


class Decoder(Protocol):
    """submit(values) then collect() -> DecodedBatch; one batch in flight; close()."""

    def submit(self, values: list[bytes | None]) -> None: ...
    def collect(self) -> DecodedBatch: ...
    def close(self) -> None: ...


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
    """``"process"`` -> :class:`DecoderProcess`, ``"inline"`` -> :class:`SampleDecoder`."""
    if kind == "process":
        return DecoderProcess(state)
    if kind == "inline":
        return SampleDecoder(state)
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
