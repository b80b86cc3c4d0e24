"""`idproxy bench serve`: load on the read API, FastAPI/uvicorn vs the legacy stdlib server.

It writes ``--items`` proxies (d = ``--dim``) into a real `ProxyStore` in a temporary
directory and publishes v1, then for each server (`benchmarks.serve_server`, a subprocess
on a free 127.0.0.1 port, reading the store as a RocksDB secondary) runs each scenario
with a closed-loop locust load generator in its own process (`benchmarks.serve_loadgen`):
single GET at concurrency 1/16/64, POST /v1/proxies:batch of 100 and 1,000 items, JSON
and binary (``Accept: application/octet-stream``), at concurrency 1/16. The legacy server
has no binary answers: those rows are only measured on FastAPI.

Each scenario warms up (``--warmup``, not measured) and then runs ``--duration`` seconds.
Before it, the writer (this process, the store's one primary) writes a new version v(k+1);
a third into the measured window it publishes it, two thirds in it rolls back to the
previous version. Every vector's values encode its version and item (`expected`), and the
load generator checks every answer against them: a mix of versions is a torn read. Torn
reads and errors (non-2xx, timeouts, connection errors) must both be 0.

Writes a table, ``serve.png`` (req/s and p99 vs concurrency) and ``results.json`` under
``<run_dir>/bench-serve-<time>/`` and ends with one JSON line. ``--quick``: a tiny store,
~1 s scenarios and only the scenarios the summary needs (for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idproxy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("fastapi", "legacy")


@dataclass(frozen=True)
class Scenario:
    """One load shape: single GET (batch 0) or a batch of ``batch`` items."""

    batch: int
    binary: bool
    users: int

    @property
    def family(self) -> str:
        if not self.batch:
            return "get"
        return f"batch{self.batch} {'binary' if self.binary else 'json'}"

    @property
    def name(self) -> str:
        return f"{self.family} c{self.users}"


def scenarios(quick: bool) -> list[Scenario]:
    """The full matrix, or in ``--quick`` only what the summary line needs."""
    if quick:
        return [Scenario(0, False, 64), Scenario(1000, False, 1), Scenario(1000, True, 1)]
    out = [Scenario(0, False, c) for c in (1, 16, 64)]
    for batch in (100, 1000):
        out += [Scenario(batch, binary, c) for binary in (False, True) for c in (1, 16)]
    return out


def tag_of(version: str) -> int:
    """Version "v7" -> 7: the integer part of all its vectors' values."""
    return int(version.lstrip("v"))


def expected(tag: int, idx: np.ndarray, n_items: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The [len(idx), d] float32 p_coarse / p_fine of items ``idx`` in version v<tag>."""
    item = np.asarray(idx, np.float64)[:, None]
    col = np.arange(dim, dtype=np.float64)[None, :]
    coarse = tag + item / (2 * n_items) + 0 * col
    fine = tag + 0.5 + item / (4 * n_items) + col / (8 * dim)
    return coarse.astype(np.float32), fine.astype(np.float32)


class Writer:
    """The store's one primary: builds versions, publishes, rolls back."""

    def __init__(self, path: Path, items: int, dim: int) -> None:
        from store import ProxyStore

        self.store = ProxyStore(path, dim=dim, retain_versions=3)
        self.items, self.dim, self.tag = items, dim, 0

    def write_next(self) -> str:
        """Writes (does not publish) the next version; returns its name."""
        self.tag += 1
        version = f"v{self.tag}"
        self.store.stage(version, expected_items=self.items)
        for s in range(0, self.items, 2000):
            idx = np.arange(s, min(s + 2000, self.items))
            coarse, fine = expected(self.tag, idx, self.items, self.dim)
            self.store.write_batch(version, [f"item-{i}" for i in idx], coarse, fine)
        self.store.db.flush()
        return version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per scenario")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="uvicorn")
    parser.add_argument("--http", default="auto", help="uvicorn HTTP parser (auto: httptools)")
    parser.add_argument("--loop", default="auto", help="uvicorn event loop (auto: uvloop)")
    parser.add_argument(
        "--refresh-s", type=float, help="API refresh interval (default settings.store)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="fastapi,legacy")
    parser.add_argument("--only", help='comma-separated scenario names, e.g. "get c64"')
    parser.add_argument("--quick", action="store_true", help="tiny store, ~1 s scenarios")
    parser.add_argument(
        "--gen-procs",
        type=int,
        default=os.cpu_count() or 1,
        help="load-generator processes for concurrency >= 16 (default: CPU count)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def start_server(impl: str, store: Path, args: argparse.Namespace, log: Path):
    """A server subprocess, once its /healthz answers; (Popen, base URL)."""
    import urllib.request

    port = _free_port()
    cmd = [sys.executable, "-m", "benchmarks.serve_server", "--impl", impl, "--store", str(store)]
    cmd += ["--dim", str(args.dim), "--port", str(port), "--workers", str(args.workers)]
    cmd += ["--http", args.http, "--loop", args.loop, "--refresh-s", str(args.refresh_s)]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{impl} server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn's supervisor stops its workers), SIGKILL to the group after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the uvicorn workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return float("nan")


def generators(sc: Scenario, args) -> list[int]:
    """Users per load-generator process: one process per core for concurrency ≥ 16 (one
    gevent process saturates a core near 2,700 req/s), else one."""
    procs = max(1, min(args.gen_procs, sc.users)) if sc.users >= 16 else 1
    return [sc.users // procs + (k < sc.users % procs) for k in range(procs)]


def run_scenario(sc: Scenario, url: str, server: subprocess.Popen, writer: Writer, args) -> dict:
    """One scenario; a new version is published and rolled back inside the measured window.

    The users are split over ``generators`` processes; their latencies are pooled."""
    old = writer.store.active_version()
    new = writer.write_next()
    gens = []
    for k, users in enumerate(generators(sc, args)):
        cmd = [sys.executable, "-m", "benchmarks.serve_loadgen", "--host", url, "--users"]
        cmd += [str(users), "--warmup", str(args.warmup), "--duration", str(args.duration)]
        cmd += ["--items", str(args.items), "--dim", str(args.dim)]
        cmd += ["--seed", str(writer.tag * 16 + k)]
        cmd += ["--kind", "batch", "--batch", str(sc.batch)] if sc.batch else ["--kind", "get"]
        cmd += ["--binary"] if sc.binary else []
        gens.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, text=True))
    try:
        starts = [json.loads(g.stdout.readline() or "{}").get("t0") for g in gens]
        if None in starts:
            codes = [g.wait(30) for g in gens]
            raise RuntimeError(f"load generator failed for {sc.name} (exits {codes})")
        t0 = min(starts)
        cpu0 = _cpu_s(server.pid)
        time.sleep(max(0.0, t0 + args.duration / 3 - time.time()))
        writer.store.publish(new)
        time.sleep(max(0.0, t0 + 2 * args.duration / 3 - time.time()))
        writer.store.rollback(old)
        time.sleep(max(0.0, t0 + args.duration - time.time()))
        server_cpu = (_cpu_s(server.pid) - cpu0) / args.duration
        outs = [g.communicate(timeout=args.warmup + args.duration + 120)[0] for g in gens]
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
                g.wait()
    writer.store.gc()
    result = pool_results([json.loads(out.strip().splitlines()[-1]) for out in outs])
    result |= {"published": new, "rolled_back_to": old, "server_cpu": round(server_cpu, 3)}
    return result


def pool_results(parts: list[dict]) -> dict:
    """The load generators' results as one: counts and rates summed, latencies pooled.

    >>> a = {"rps": 2.0, "errors": 0, "torn_reads": 0, "client_cpu": 0.5,
    ...      "versions_seen": {"v1": 2}, "first_failures": [], "latencies_ms": [1.0, 3.0]}
    >>> r = pool_results([a, a | {"latencies_ms": [2.0]}])
    >>> r["requests"], r["rps"], r["p50_ms"], r["versions_seen"], r["generators"]
    (3, 4.0, 2.0, {'v1': 4}, 2)
    """
    lat = np.concatenate([np.asarray(p["latencies_ms"], float) for p in parts])
    versions: dict[str, int] = {}
    for p in parts:
        for v, n in p["versions_seen"].items():
            versions[v] = versions.get(v, 0) + n
    return {
        "requests": int(lat.size),
        "rps": sum(p["rps"] for p in parts),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "errors": sum(p["errors"] for p in parts),
        "torn_reads": sum(p["torn_reads"] for p in parts),
        "versions_seen": versions,
        "client_cpu": round(sum(p["client_cpu"] for p in parts), 3),
        "first_failures": [f for p in parts for f in p["first_failures"]][:5],
        "generators": len(parts),
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    from benchmarks.serve_report import plot, print_table, summarize

    if args.quick:
        args.items, args.duration, args.warmup = min(args.items, 1000), 1.0, 0.3
    if args.refresh_s is None:
        refresh = settings.store.refresh_interval_s
        args.refresh_s = min(refresh, 0.2) if args.quick else refresh
    out_dir = (Path(settings.run_dir) / f"bench-serve-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    servers = [s for s in args.servers.split(",") if s]
    results: dict[str, dict[str, dict]] = {s: {} for s in servers}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="idproxy-bench-serve-") as tmp:
        store_path = Path(tmp) / "store"
        writer = Writer(store_path, args.items, args.dim)
        print(f"building a store of {args.items:,} items (d={args.dim}) ...", flush=True)
        writer.store.publish(writer.write_next())
        try:
            for impl in servers:
                proc, url = start_server(impl, store_path, args, out_dir / f"server-{impl}.log")
                print(f"[{impl}] serving on {url} (pid {proc.pid})", flush=True)
                try:
                    for sc in scenarios(args.quick):
                        if impl == "legacy" and sc.binary:
                            continue  # the stdlib server only answers JSON
                        if args.only and sc.name not in args.only.split(","):
                            continue
                        r = run_scenario(sc, url, proc, writer, args)
                        results[impl][sc.name] = r
                        print(
                            f"[{impl}] {sc.name:<20} {r['rps']:>9,.0f} req/s  "
                            f"p50 {r['p50_ms'] or 0:7.2f} ms  p99 {r['p99_ms'] or 0:7.2f} ms  "
                            f"errors {r['errors']}  torn {r['torn_reads']}  "
                            f"versions {sorted(r['versions_seen'])}",
                            flush=True,
                        )
                finally:
                    stop(proc)
        finally:
            writer.store.close()
    config = {
        "items": args.items,
        "dim": args.dim,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "uvicorn_workers": args.workers,
        "generator_processes": args.gen_procs,
        "http": args.http,
        "loop": args.loop,
        "refresh_interval_s": args.refresh_s,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "load_generator": "locust (FastHttpUser, closed loop)",
    }
    summary = summarize(results, config, out_dir, time.time() - started)
    print_table(results, config)
    plot(results, out_dir / "serve.png", config)
    (out_dir / "results.json").write_text(json.dumps({**summary, "scenarios": results}, indent=2))
    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 and summary["torn_reads"] == 0 else 1
