"""Finding processes a test started, orphans included (for clean-shutdown checks)."""

from __future__ import annotations

from pathlib import Path


def processes_with_env(entry: str) -> list[int]:
    """Pids whose environment holds ``entry`` (children inherit it, orphans too)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            pass  # exited meanwhile, or not ours to read
    return found
