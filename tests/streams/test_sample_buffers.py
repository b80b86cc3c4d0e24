"""The processor's sample buffers: frames per partition, acknowledgements in offset order
only after the frame holding the event's sample is delivered (no broker)."""

from __future__ import annotations

import asyncio

import pytest

from streams.sample_buffers import SampleBuffers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """A ``send`` that records frames; ``hold`` keeps deliveries pending until released."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, list]] = []
        self.hold: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def send(self, partition: int, rows: list) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        self.frames.append((partition, list(rows)))


def _setup(batch_max: int = 3, linger_s: float = 0.05):
    broker, clock, acked = Broker(), Clock(), []
    buffers = SampleBuffers(broker.send, batch_max=batch_max, linger_s=linger_s, clock=clock)
    return buffers, broker, clock, acked


def test_a_full_buffer_is_one_frame_and_its_events_are_acked_after_it_in_order():
    buffers, broker, _, acked = _setup(batch_max=3)

    async def run():
        for k in range(7):
            buffers.add(k % 2, f"r{k}")
            await buffers.done(k % 2, lambda k=k: acked.append(k))

    asyncio.run(run())
    assert broker.frames == [(0, ["r0", "r2", "r4"]), (1, ["r1", "r3", "r5"])]
    assert acked == [0, 2, 4, 1, 3, 5]  # 6 waits for its frame
    assert buffers.pending() == 1 and buffers.frames == 2 and buffers.samples == 6


def test_a_buffer_is_sent_once_its_oldest_entry_lingered():
    buffers, broker, clock, acked = _setup(batch_max=100, linger_s=0.05)

    async def run():
        buffers.add(0, "a")
        await buffers.done(0, lambda: acked.append("a"))
        clock.now = 0.04
        buffers.add(0, "b")
        await buffers.done(0, lambda: acked.append("b"))
        await buffers.flush_due()
        assert (broker.frames, acked) == ([], [])
        clock.now = 0.05
        await buffers.flush_due()

    asyncio.run(run())
    assert broker.frames == [(0, ["a", "b"])] and acked == ["a", "b"]


def test_an_event_without_a_sample_is_acked_at_once_only_when_nothing_waits_before_it():
    buffers, broker, _, acked = _setup()

    async def run():
        await buffers.done(0, lambda: acked.append("dead letter, empty partition"))
        assert acked == ["dead letter, empty partition"]
        buffers.add(0, "r1")
        await buffers.done(0, lambda: acked.append("r1"))
        await buffers.done(0, lambda: acked.append("dead letter after r1"))
        await buffers.done(1, lambda: acked.append("other partition"))
        assert acked[1:] == ["other partition"]
        await buffers.flush_due(everything=True)

    asyncio.run(run())
    assert acked[2:] == ["r1", "dead letter after r1"]
    assert broker.frames == [(0, ["r1"])]


def test_an_event_handled_while_its_partition_is_being_sent_waits_for_the_next_flush():
    buffers, broker, _, acked = _setup()

    async def run():
        broker.hold = asyncio.Event()
        buffers.add(0, "r0")
        await buffers.done(0, lambda: acked.append("r0"))
        sending = asyncio.create_task(buffers.flush(0))
        await asyncio.sleep(0)  # the frame of r0 is on its way, not delivered
        await buffers.done(0, lambda: acked.append("no sample"))
        assert acked == []  # must not overtake r0
        broker.hold.set()
        await sending
        assert acked == ["r0"]
        await buffers.flush_due(everything=True)

    asyncio.run(run())
    assert acked == ["r0", "no sample"] and broker.frames == [(0, ["r0"])]


def test_more_rows_than_a_frame_holds_go_out_as_several_frames():
    buffers, broker, _, acked = _setup(batch_max=2)

    async def run():
        for k in range(5):  # e.g. records re-read after a gap, before the event revealing it
            buffers.add(0, k)
        await buffers.done(0, lambda: acked.append("event"))

    asyncio.run(run())
    assert broker.frames == [(0, [0, 1]), (0, [2, 3]), (0, [4])] and acked == ["event"]


def test_a_failed_send_keeps_the_rows_and_events_for_the_next_flush():
    buffers, broker, _, acked = _setup()

    async def run():
        broker.fail = ConnectionError("broker away")
        buffers.add(0, "r0")
        await buffers.done(0, lambda: acked.append("r0"))
        with pytest.raises(ConnectionError):
            await buffers.flush(0)
        assert acked == [] and buffers.pending() == 1
        broker.fail = None
        buffers.add(0, "r1")
        await buffers.done(0, lambda: acked.append("r1"))
        await buffers.flush_due(everything=True)

    asyncio.run(run())
    assert broker.frames == [(0, ["r0", "r1"])] and acked == ["r0", "r1"]
