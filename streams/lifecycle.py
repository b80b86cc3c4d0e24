"""Graceful stop and broker outages for the long-running loops.

SIGTERM/SIGINT set a flag, the loop finishes its batch, commits and exits. A commit that
fails because the broker is away is logged, not fatal: the output was already made
durable, so the worst case is a re-delivery that the idempotent writes absorb. A poll that
fails because the broker is away (a retriable Kafka error, e.g. connection refused while
it restarts) is logged and returns nothing, so the loop keeps its stop and idle checks
and reconnects when the broker is back.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


def commit_or_log(consumer, offsets: dict | None = None) -> bool:
    """``consumer.commit(offsets)``; on a Kafka error (broker down, group rebalancing) logs
    and returns False instead of raising."""
    from kafka.errors import KafkaError

    try:
        if offsets is None:
            consumer.commit()
        else:
            consumer.commit(offsets)
    except KafkaError as exc:
        log.warning("offset commit failed (%s); the work is durable and will be re-read", exc)
        return False
    return True


def poll_or_wait(consumer, timeout_ms: int, max_records: int) -> dict:
    """``consumer.poll``; while the broker is away, logs, waits ``timeout_ms`` (at most 1 s)
    and returns ``{}``. Non-retriable errors (authorisation, bad config) still raise."""
    from kafka.errors import KafkaError

    try:
        return consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        log.warning("poll failed (%s); the broker is away, retrying", exc)
        time.sleep(min(timeout_ms, 1000) / 1000)
        return {}


def poll_batch(consumer, max_records: int, max_wait_ms: int, stopping: Callable[[], bool]) -> list:
    """Up to ``max_records`` records: waits up to 200 ms for the first one, then up to
    ``max_wait_ms`` for the batch to fill. ``[]`` when idle, so the caller can check for a
    stop or an idle exit."""
    batch: list = []
    deadline = None
    while len(batch) < max_records and not stopping():
        timeout = 200 if deadline is None else max(0, int((deadline - time.time()) * 1000))
        polled = poll_or_wait(consumer, timeout, max_records - len(batch))
        for records in polled.values():
            batch.extend(records)
        if batch and deadline is None:
            deadline = time.time() + max_wait_ms / 1000
        if deadline is None and not polled:
            return batch
        if deadline is not None and time.time() >= deadline:
            break
    return batch


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Routes SIGTERM/SIGINT to ``handler`` while inside (main thread only; tests run loops
    in threads, where signals cannot be installed), then restores the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
