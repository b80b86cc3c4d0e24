"""Graceful stop for the long-running loops: SIGTERM/SIGINT set a flag, the loop finishes
its batch, commits and exits."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


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
