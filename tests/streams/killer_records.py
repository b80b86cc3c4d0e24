"""The faust processor's per-record handling (``streams.processor.isolated``) in a process
that kills itself (``os._exit``) on the record at offset ``KILL_OFFSET``, as a native crash
would; no broker: every run is handed the same five records, as faust re-delivers the
un-committed ones after a restart.

``python -m tests.streams.killer_records FOLDER MAX_DEATHS``: markers in FOLDER, handled
offsets appended to FOLDER/handled, dead letters to FOLDER/letters.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

KILL_CODE = 87
KILL_OFFSET = 2


def main() -> int:
    from streams.inflight_markers import FileMarkers
    from streams.processor import RawRecord, isolated
    from streams.quarantine import CrashQuarantine

    folder, max_deaths = Path(sys.argv[1]), int(sys.argv[2])
    quarantine = CrashQuarantine(FileMarkers(folder / "inflight.json"), max_deaths)

    async def handle(record: RawRecord) -> None:
        if record.offset == KILL_OFFSET:
            os._exit(KILL_CODE)
        with open(folder / "handled", "a") as f:
            f.write(f"{record.offset}\n")

    async def dead_letter(record: RawRecord, reason: str, durable: bool = False) -> None:
        with open(folder / "letters", "a") as f:
            f.write(f"{record.offset} {reason}\n")

    async def run() -> None:
        for offset in range(5):
            record = RawRecord("clicks", 0, offset, b"k", b"v")
            await isolated(handle, record, quarantine, dead_letter)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
