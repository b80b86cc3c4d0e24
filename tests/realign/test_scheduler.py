"""The re-alignment scheduler: overlaps skipped, restarts resume, no double runs."""

import json
import threading
import time

from tests.streams.helpers import wait_until as _wait_for
from trainer.scheduler import PersistentIntervalJob


def test_overlapping_runs_are_skipped_not_stacked(tmp_path):
    release = threading.Event()
    active, max_active, calls = [0], [0], [0]

    def slow_job():
        active[0] += 1
        max_active[0] = max(max_active[0], active[0])
        calls[0] += 1
        release.wait(5)
        active[0] -= 1

    job = PersistentIntervalJob(slow_job, interval_s=0.05, state_dir=tmp_path)
    job.start()
    assert _wait_for(lambda: calls[0] == 1)
    time.sleep(0.5)  # ~10 intervals pass while the first run is still busy
    assert calls[0] == 1 and max_active[0] == 1
    release.set()
    job.shutdown()
    assert json.loads((tmp_path / "state.json").read_text())["runs"] >= 1


def test_restart_resumes_from_persisted_state(tmp_path):
    job = PersistentIntervalJob(lambda: None, interval_s=3600, state_dir=tmp_path)
    assert job.run_once()
    restarted = PersistentIntervalJob(lambda: None, interval_s=3600, state_dir=tmp_path)
    wait = restarted.first_run_at().timestamp() - time.time()
    assert 3500 < wait <= 3600  # not immediately again after a restart
    assert restarted.state()["runs"] == 1


def test_two_processes_do_not_run_the_job_twice(tmp_path):
    inside = threading.Event()
    release = threading.Event()

    def job_fn():
        inside.set()
        release.wait(5)

    first = PersistentIntervalJob(job_fn, interval_s=3600, state_dir=tmp_path)
    second = PersistentIntervalJob(lambda: None, interval_s=3600, state_dir=tmp_path)
    t = threading.Thread(target=first.run_once)
    t.start()
    assert inside.wait(5)
    assert second.run_once() is False and second.skipped == 1
    release.set()
    t.join()
    assert second.run_once() is True
