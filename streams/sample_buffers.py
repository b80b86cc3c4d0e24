"""The processor's per-partition sample buffers, and when their events are acknowledged.

The processor turns each record of ``clicks-by-item`` into one sample row and appends it to
the buffer of the record's partition. A buffer is sent as one frame (``samples_batch_max``
rows at most) when it is full or its oldest entry is ``samples_linger_ms`` old.

**An event is acknowledged only after every sample of its partition buffered before it, and
its own, is on the broker**, and acknowledgements of one partition happen in offset order:

* :meth:`SampleBuffers.add` buffers a row; :meth:`SampleBuffers.done` is called once per
  event after it was handled. When its partition holds nothing (no row, no waiting event,
  no frame being sent) the event is acknowledged at once: a dead-lettered or skipped record,
  or one whose row went out already. Otherwise it waits in the buffer with the rows and is
  acknowledged when the frame holding them is delivered.
* Frames of one partition are sent one at a time (a lock per partition), and the events of
  a flush are acknowledged in their order after its frames are delivered.

Why the order matters: faust-streaming 0.15 commits the first run of consecutive acked
offsets, and only refuses when the run starts *more than one* offset past the committed one
(``Consumer._new_offset``), so acknowledging offset n+1 while n waits in a buffer would let
a commit move past n.

A failed send puts the rows and events back in front of the buffer (sent again later; a
frame that went out before the failure is then a duplicate, which the trainer drops by
``sample_key``) and raises.

>>> import asyncio
>>> sent, acked = [], []
>>> async def send(partition, rows):
...     sent.append((partition, list(rows)))
>>> buffers = SampleBuffers(send, batch_max=2, linger_s=60)
>>> async def demo():
...     buffers.add(0, "r0")
...     await buffers.done(0, lambda: acked.append("e0"))  # waits with its row
...     await buffers.done(0, lambda: acked.append("e1"))  # dead-lettered: waits for e0
...     await buffers.done(1, lambda: acked.append("e2"))  # partition 1 is empty: at once
...     buffers.add(0, "r3")
...     await buffers.done(0, lambda: acked.append("e3"))  # full: one frame, acks in order
>>> asyncio.run(demo())
>>> sent, acked
([(0, ['r0', 'r3'])], ['e2', 'e0', 'e1', 'e3'])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Send = Callable[[int, list[Any]], Awaitable[None]]  # (partition, rows): returns once delivered
Ack = Callable[[], Any]


@dataclass
class _Buffer:
    rows: list[Any] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)  # events waiting for these rows, in order
    since: float | None = None  # clock() of the oldest entry; None when empty
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held while a flush sends

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.acks or self.lock.locked())


class SampleBuffers:
    """Sample rows per partition, sent as frames of at most ``batch_max`` rows by ``send``,
    and the acknowledgements that wait for them (see the module docstring)."""

    def __init__(
        self,
        send: Send,
        batch_max: int,
        linger_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, not {batch_max}")
        self.send = send
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.clock = clock
        self.buffers: dict[int, _Buffer] = {}
        self.frames = 0  # frames sent
        self.samples = 0  # rows sent

    def _buffer(self, partition: int) -> _Buffer:
        buf = self.buffers.get(partition)
        if buf is None:
            buf = self.buffers[partition] = _Buffer()
        return buf

    def add(self, partition: int, row: Any) -> None:
        """Buffers one sample row of ``partition``."""
        buf = self._buffer(partition)
        if buf.since is None:
            buf.since = self.clock()
        buf.rows.append(row)

    async def done(self, partition: int, ack: Ack) -> None:
        """An event of ``partition`` was handled: ``ack()`` now if nothing of its partition
        is pending, else once the pending rows are delivered; sends a full buffer."""
        buf = self._buffer(partition)
        if not buf.busy:
            ack()
            return
        if buf.since is None:
            buf.since = self.clock()
        buf.acks.append(ack)
        if len(buf.rows) >= self.batch_max:
            await self.flush(partition)

    def pending(self) -> int:
        """Events waiting for their acknowledgement."""
        return sum(len(b.acks) for b in self.buffers.values())

    def due(self) -> list[int]:
        """Partitions whose oldest entry is at least ``linger_s`` old."""
        now = self.clock()
        return [
            p
            for p, b in self.buffers.items()
            if b.since is not None and now - b.since >= self.linger_s
        ]

    async def flush_due(self, everything: bool = False) -> None:
        """Sends the buffers that lingered long enough (``everything``: all non-empty ones)."""
        partitions = (
            [p for p, b in self.buffers.items() if b.since is not None]
            if everything
            else self.due()
        )
        for partition in partitions:
            await self.flush(partition)

    async def flush(self, partition: int) -> None:
        """Sends ``partition``'s rows (frames of ``batch_max`` at most), waits until the
        broker has them, then acknowledges the events that waited for them, in order."""
        buf = self._buffer(partition)
        async with buf.lock:
            rows, acks, since = buf.rows, buf.acks, buf.since
            if not rows and not acks:
                return
            buf.rows, buf.acks, buf.since = [], [], None
            try:
                for start in range(0, len(rows), self.batch_max):
                    chunk = rows[start : start + self.batch_max]
                    await self.send(partition, chunk)
                    self.frames += 1
                    self.samples += len(chunk)
            except BaseException:
                buf.rows[:0], buf.acks[:0] = rows, acks  # sent again by a later flush
                buf.since = since if buf.since is None else min(buf.since, since)
                raise
            for ack in acks:
                ack()
