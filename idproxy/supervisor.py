"""Supervised `idproxy` subprocesses for the demo: logs in files, clean shutdown.

Each child runs in its own session (process group), writes stdout+stderr to
``<log_dir>/<name>.log`` (a pipe nobody reads would fill and block it) and is stopped with
SIGTERM to its whole group, then SIGKILL after a grace period, so no orphan survives the
demo, also on Ctrl-C.

Readiness comes from the child's health endpoint (``ready=`` a probe at start, e.g.
:func:`metrics_probe` on its Prometheus port, or :func:`http_probe` on the read API's
``/healthz``) and ``wait_ready``; ``wait_for`` (a line in the log) is for children without
one.

>>> import sys, tempfile
>>> with Supervisor(tempfile.mkdtemp(), {}) as sup:
...     child = sup.start("echo", [sys.executable, "-c", "print('ready')"], command=False)
...     sup.wait_for("echo", "ready", timeout=30)
...     child.name
'echo'
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from idproxy.prometheus import is_ready


class ChildFailed(RuntimeError):
    """A supervised child exited unexpectedly or never became ready."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log_start: int = 0  # where this run's output begins in the (appended) log

    def output(self) -> str:
        """This run's output (a restarted child appends to the same log)."""
        if not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(self.log_start)
            return fh.read().decode(errors="replace")

    def tail(self, chars: int = 2000) -> str:
        return self.output()[-chars:]


class Supervisor:
    """Starts, watches and stops named child processes."""

    def __init__(self, log_dir: str | Path, env: dict[str, str]) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **env}
        self.children: dict[str, Child] = {}
        self.argv: dict[str, list[str]] = {}  # name -> command line, for restarts
        self.nice: dict[str, int] = {}  # name -> niceness, for restarts
        self.restarts: dict[str, int] = {}
        self.probes: dict[str, Callable[[], bool]] = {}  # name -> readiness probe

    def start(
        self,
        name: str,
        args: list[str],
        *,
        command: bool = True,
        nice: int = 0,
        ready: Callable[[], bool] | None = None,
    ) -> Child:
        """Runs ``idproxy <args>`` (or ``args`` as is when ``command=False``) in its own
        session, at niceness ``nice`` (through nice(1), which execs the command: same pid,
        same group; and for its session's autogroup, see ``_nice_autogroup``). ``ready``:
        its readiness probe, kept for restarts (``wait_ready``)."""
        if ready is not None:
            self.probes[name] = ready
        argv = [sys.executable, "-m", "idproxy.cli", *args] if command else args
        self.argv[name], self.nice[name] = argv, nice
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        log_path = self.log_dir / f"{name}.log"
        log_start = log_path.stat().st_size if log_path.is_file() else 0
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if nice:
            _nice_autogroup(proc.pid, nice)
        child = Child(name, proc, log_path, log_start)
        self.children[name] = child
        return child

    def wait_for(self, name: str, needle: str, timeout: float = 300) -> None:
        """Blocks until ``needle`` appears in the child's log; ChildFailed if it exits."""
        child = self.children[name]
        end = time.time() + timeout
        while needle not in child.output():
            if child.proc.poll() is not None:
                raise ChildFailed(f"{name} exited ({child.proc.returncode}):\n{child.tail()}")
            if time.time() > end:
                raise ChildFailed(f"{name} not ready after {timeout:.0f} s:\n{child.tail()}")
            time.sleep(0.2)

    def wait_ready(self, name: str, timeout: float = 300) -> None:
        """Blocks until the child's readiness probe answers True; ChildFailed if it exits."""
        child, probe = self.children[name], self.probes[name]
        end = time.time() + timeout
        while not probe():
            if child.proc.poll() is not None:
                raise ChildFailed(f"{name} exited ({child.proc.returncode}):\n{child.tail()}")
            if time.time() > end:
                raise ChildFailed(f"{name} not ready after {timeout:.0f} s:\n{child.tail()}")
            time.sleep(0.2)

    def check_alive(self, names: list[str] | None = None) -> None:
        """ChildFailed if any of ``names`` (default: all) has exited."""
        for name in names or list(self.children):
            child = self.children[name]
            if child.proc.poll() is not None:
                raise ChildFailed(f"{name} exited ({child.proc.returncode}):\n{child.tail()}")

    def stop(self, name: str, grace_s: float = 30.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL after ``grace_s``; its exit code."""
        child = self.children.pop(name, None)
        if child is None:
            return None
        proc = child.proc
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        _signal_group(proc, signal.SIGKILL)  # stragglers the child itself started
        return proc.returncode

    def logs(self, name: str) -> str:
        """Everything ``name`` has written, over all its runs (also after it stopped)."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self, name: str) -> None:
        """SIGKILL the child's process group (fault injection: no clean shutdown)."""
        child = self.children.pop(name)
        _signal_group(child.proc, signal.SIGKILL)
        child.proc.wait(timeout=30)

    def pause(self, name: str, seconds: float) -> None:
        """SIGSTOP the child's process group for ``seconds``, then SIGCONT (a stalled
        process: no heartbeats, no progress, but no exit either)."""
        child = self.children[name]
        _signal_group(child.proc, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            _signal_group(child.proc, signal.SIGCONT)

    def restart(self, name: str) -> Child:
        """Starts ``name`` again with the command line it had (logs are appended)."""
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return self.start(name, self.argv[name], command=False, nice=self.nice[name])

    def stop_all(self, grace_s: float = 30.0) -> None:
        """Stops every child, newest first."""
        for name in reversed(list(self.children)):
            self.stop(name, grace_s)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _nice_autogroup(pid: int, nice: int) -> None:
    """Gives the child's session autogroup the niceness ``nice``.

    With ``CONFIG_SCHED_AUTOGROUP`` (``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the
    default of most distributions) the scheduler first shares the CPU between autogroups
    (one per session), and a process's own niceness only ranks it *within* its group.
    Every child runs in its own session, so nice(1) alone would change nothing between
    them (measured: two trainers at nice 10 still took half the CPU from the worker). The
    group's niceness is set through ``/proc/<pid>/autogroup``; raising it needs no
    privilege. Where the file does not exist (no autogroups) nice(1) already works.
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _fetch(url: str) -> tuple[int, str] | None:
    """(status, body) of a GET, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def http_probe(url: str) -> Callable[[], bool]:
    """Ready when ``url`` answers 200 (e.g. the read API's ``/healthz``)."""
    return lambda: (answer := _fetch(url)) is not None and answer[0] == 200


def metrics_probe(component: str, port: int) -> Callable[[], bool]:
    """Ready when http://127.0.0.1:port/metrics says ``idproxy_<component>_ready 1``."""
    url = f"http://127.0.0.1:{port}/metrics"
    return lambda: (answer := _fetch(url)) is not None and is_ready(component, answer[1])
