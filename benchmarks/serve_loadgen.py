"""The load generator process of `idproxy bench serve`: locust, used as a library.

Why locust: an established load-testing tool, installable from wheels (gevent,
geventhttpclient: no compiler), whose ``FastHttpUser`` is a closed-loop virtual user on a
keep-alive connection (concurrency = users, no think time) and whose ``catch_response``
lets every answer be checked, which a fixed-request tool such as ``wrk`` or ``ab`` cannot
do (and neither is pip-installable). It runs in its own process so its CPU is not the
bench's; its per-request latency (``perf_counter`` from send to the last body byte) and
start time come from locust's request event, so warm-up is excluded exactly.

``python -m benchmarks.serve_loadgen --host URL --kind get|batch [--batch N --binary]
--users U --warmup W --duration D --items N`` prints ``{"t0": <wall clock>}`` when the
measured window starts, then one JSON line of results. Every answer is verified against
the values the bench wrote (`benchmarks.bench_serve.expected`): an answer whose vectors
are not all exactly those of the version it names is a torn read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import gevent
import msgspec
import numpy as np
import psutil
from locust import FastHttpUser, constant, task  # monkey-patches the stdlib for gevent
from locust.env import Environment

from benchmarks.bench_serve import expected, tag_of
from idproxy.proxy_wire import FOUND, decode_batch

OCTET = "application/octet-stream"


class TornRead(Exception):
    """The answer's vectors are not all those of the version it names."""


class Scenario:
    """What the users send, the pre-built batch bodies and the run's counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        rng = np.random.default_rng(args.seed)
        self.bodies = []  # a pool of batch bodies, reused round-robin (less client CPU)
        for _ in range(64 if args.kind == "batch" else 0):
            idx = rng.integers(0, args.items, args.batch)
            doc = {"item_ids": [f"item-{i}" for i in idx]}
            self.bodies.append((json.dumps(doc).encode(), idx))
        self.start = self.end = float("inf")
        self.latencies_ms: list[float] = []
        self.errors = self.torn = 0
        self.versions: dict[str, int] = {}
        self.reasons: list[str] = []
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def on_request(self, response_time: float, exception: Exception | None, **kw: object) -> None:
        if exception is not None:
            if isinstance(exception, TornRead):
                self.torn += 1
            else:
                self.errors += 1
            if len(self.reasons) < 5:
                self.reasons.append(f"{type(exception).__name__}: {exception}"[:300])
        started = float(kw.get("start_time") or 0.0)
        if self.start <= started < self.end:
            self.latencies_ms.append(response_time)

    def check(self, version: str | None, idx: np.ndarray, coarse, fine, body: int = -1) -> None:
        """Raises TornRead unless every vector is exactly the named version's."""
        if version is None:
            raise TornRead("no active version")
        self.versions[version] = self.versions.get(version, 0) + 1
        key = (body, tag_of(version))
        want = self._cache.get(key) if body >= 0 else None
        if want is None:
            want = expected(key[1], idx, self.args.items, self.args.dim)
            if body >= 0:
                self._cache[key] = want
        c, f = np.asarray(coarse, np.float32), np.asarray(fine, np.float32)
        if not (np.array_equal(c, want[0]) and np.array_equal(f, want[1])):
            raise TornRead(f"vectors not all of {version}")


def make_user(sc: Scenario) -> type[FastHttpUser]:
    args = sc.args

    class ProxyUser(FastHttpUser):
        wait_time = constant(0)
        network_timeout = args.timeout_s
        connection_timeout = args.timeout_s
        host = args.host

        def on_start(self) -> None:
            self.i = random.randrange(1 << 20)

        @task
        def call(self) -> None:
            if args.kind == "get":
                self.get_one()
            else:
                self.batch()

        def get_one(self) -> None:
            i = random.randrange(args.items)
            with self.client.get(f"/v1/proxies/item-{i}", name="get", catch_response=True) as r:
                if r.status_code == 200:
                    doc = msgspec.json.decode(r.content)
                    idx = np.array([i])
                    try:
                        sc.check(doc["version"], idx, [doc["p_coarse"]], [doc["p_fine"]])
                    except TornRead as exc:
                        r.failure(exc)

        def batch(self) -> None:
            self.i += 1
            b = self.i % len(sc.bodies)
            body, idx = sc.bodies[b]
            accept = OCTET if args.binary else "application/json"
            headers = {"Accept": accept, "Content-Type": "application/json"}
            with self.client.post(
                "/v1/proxies:batch", data=body, headers=headers, name="batch", catch_response=True
            ) as r:
                if r.status_code != 200:
                    return
                try:
                    if args.binary:
                        wb = decode_batch(r.content)
                        if not (wb.mask == FOUND).all():
                            raise TornRead("items missing")
                        sc.check(wb.version, idx, wb.p_coarse, wb.p_fine, b)
                    else:
                        doc = msgspec.json.decode(r.content)
                        if not all(doc["found"]):
                            raise TornRead("items missing")
                        sc.check(doc["version"], idx, doc["p_coarse"], doc["p_fine"], b)
                except TornRead as exc:
                    r.failure(exc)
                except Exception as exc:  # an undecodable answer is an error, not a tear
                    r.failure(f"bad body: {exc}")

    return ProxyUser


def run(args: argparse.Namespace) -> dict:
    """Runs the closed loop for warm-up + duration; the measured window's results."""
    sc = Scenario(args)
    env = Environment(user_classes=[make_user(sc)])
    env.events.request.add_listener(sc.on_request)
    runner = env.create_local_runner()
    runner.start(args.users, spawn_rate=100)  # locust warns above 100/s
    gevent.sleep(max(args.warmup, args.users / 100 + 0.2))  # at least until all users run
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    sc.start, sc.end = time.time(), time.time() + args.duration
    print(json.dumps({"t0": sc.start}), flush=True)
    gevent.sleep(args.duration)
    cpu = (sum(proc.cpu_times()[:2]) - cpu0) / args.duration
    runner.quit()
    lat = np.array(sc.latencies_ms)
    return {
        "requests": int(lat.size),
        "rps": lat.size / args.duration,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "errors": sc.errors,
        "torn_reads": sc.torn,
        "versions_seen": sc.versions,
        "client_cpu": round(cpu, 3),
        "first_failures": sc.reasons,
        "latencies_ms": [round(x, 3) for x in sc.latencies_ms],
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="closed-loop load on the proxy read API (locust)")
    p.add_argument("--host", required=True)
    p.add_argument("--kind", choices=["get", "batch"], required=True)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--binary", action="store_true")
    p.add_argument("--users", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0, help="s, at least until all users run")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(run(parse())), flush=True)
    sys.exit(0)
