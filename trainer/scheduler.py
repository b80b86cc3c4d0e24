"""A restart-safe interval scheduler for the re-alignment job (apscheduler 3.x).

* **Overlaps are skipped, not stacked**: one instance at a time (``max_instances=1``) and
  missed runs coalesce into one (``coalesce=True``).
* **No double runs across processes**: each run holds an exclusive ``flock`` on
  ``<state_dir>/job.lock``; a second scheduler on the same state directory skips its run.
* **Survives restarts without pickle**: apscheduler's persistent job stores pickle the job
  objects, which this project does not allow. Instead the last run's start time is kept in
  ``<state_dir>/state.json`` (written atomically) and a restarted scheduler schedules its
  first run at ``last_run + interval`` (or at once when that time has passed).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


class PersistentIntervalJob:
    """Runs ``fn()`` every ``interval_s`` seconds; state and lock live in ``state_dir``."""

    def __init__(self, fn: Callable[[], object], interval_s: float, state_dir: Path) -> None:
        self.fn = fn
        self.interval_s = interval_s
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.skipped = 0

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def _write_state(self, **values: object) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.state(), **values}))
        os.replace(tmp, self.state_path)

    def run_once(self) -> bool:
        """Runs the job now unless another process is running it; True if it ran."""
        with open(self.state_dir / "job.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.skipped += 1
                log.info("re-alignment already running elsewhere: skipped")
                return False
            started = time.time()
            self._write_state(last_started_at=started)
            self.fn()
            runs = self.state().get("runs", 0) + 1
            self._write_state(last_finished_at=time.time(), runs=runs)
            return True

    def first_run_at(self) -> datetime:
        last = self.state().get("last_started_at")
        now = datetime.now().astimezone()
        if last is None:
            return now
        due = datetime.fromtimestamp(last).astimezone() + timedelta(seconds=self.interval_s)
        return max(due, now)

    def start(self) -> None:
        self.scheduler.add_job(
            self.run_once,
            "interval",
            seconds=self.interval_s,
            next_run_time=self.first_run_at(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            id="realign",
        )
        self.scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        self.scheduler.shutdown(wait=wait)
