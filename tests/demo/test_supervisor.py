"""`idproxy.supervisor`: a niced child is niced for the whole machine, not only within its
session's autogroup (each child runs in its own session)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from idproxy.supervisor import Supervisor


def _nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_niced_child_and_its_autogroup_get_the_niceness_and_keep_it_on_restart(tmp_path):
    autogroups = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if not autogroups.is_file() or autogroups.read_text().strip() != "1":
        pytest.skip("no scheduler autogroups on this kernel: nice(1) alone already applies")
    with Supervisor(tmp_path, {}) as sup:
        sup.start("sleeper", ["sleep", "30"], command=False, nice=7)
        for restart in (False, True):
            if restart:
                sup.stop("sleeper", 1)
                sup.restart("sleeper")
            time.sleep(0.2)  # nice(1) has exec'd the command
            pid = sup.children["sleeper"].proc.pid
            assert _nice_of(pid) == 7
            assert Path(f"/proc/{pid}/autogroup").read_text().split()[-1] == "7"
        plain = sup.start("plain", ["sleep", "30"], command=False)
        time.sleep(0.2)
        assert Path(f"/proc/{plain.proc.pid}/autogroup").read_text().split()[-1] == "0"
