"""Graceful stop and broker outages for the long-running loops.

SIGTERM/SIGINT set a flag, the loop finishes its batch, commits and exits. A commit that
fails because the broker is away is logged, not fatal: the output was already made
durable, so the worst case is a re-delivery that the idempotent writes absorb. A poll that
fails because the broker is away is logged and retried after a back-off.
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


def poll_or_wait(consumer, backoff_s: float, **poll_kwargs) -> dict:
    """``consumer.poll(**poll_kwargs)``; when it raises a retriable Kafka error (kafka-python
    3.x raises a broker outage, e.g. ``KafkaConnectionError``, out of ``poll``) logs, waits
    ``backoff_s`` seconds and returns ``{}``, so the loop polls again once the broker is
    back. Non-retriable errors (bad configuration, authorization) still raise."""
    from kafka.errors import KafkaError

    try:
        return consumer.poll(**poll_kwargs)
    except KafkaError as exc:
        if not getattr(exc, "retriable", False):
            raise
        log.warning("poll failed (%s); polling again in %.1f s", exc, backoff_s)
        time.sleep(backoff_s)
        return {}


def read_to_end(consumer, poll: Callable[[int], object], timeout_s: float) -> None:
    """Calls ``poll(timeout_ms)`` until every assigned partition reaches the end offset it
    had when this was called, or ``timeout_s`` passes (catch-up of a group-less reader)."""
    parts = list(consumer.assignment())
    ends = consumer.end_offsets(parts)
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(consumer.position(tp) < ends[tp] for tp in parts):
        poll(200)


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
