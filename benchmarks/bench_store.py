"""`idproxy bench store`: latency and throughput of the proxy store, in process and over HTTP.

It writes ``--items`` proxies (d = settings.model.id_dim) into a fresh store in a temporary
directory, then measures single ``get`` and ``get_many(--batch)`` latency (p50/p99) and
throughput, the same over the HTTP API on loopback, write throughput, and the ratio of
``get_many`` throughput to a raw rocksdict multi-get of the same keys (bytes only, no
decoding) in the same run: each round reads one random batch both ways, and which of the
two goes first (and so meets the colder block cache) alternates between rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200, help="get_many rounds")
    parser.add_argument("--singles", type=int, default=3000, help="single gets")
    parser.add_argument("--http-rounds", type=int, default=30)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace, settings: Settings) -> int:
    import urllib.request

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from store import ProxyStore
    from store.api_server import make_server
    from store.http_api import ProxyApi

    dim = settings.model.id_dim
    rng = np.random.default_rng(0)
    ids = [f"item-{i}" for i in range(args.items)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ProxyStore(f"{tmp}/db", dim=dim, dtype=args.dtype)
        store.stage("v1", expected_items=args.items)
        start = time.perf_counter()
        for s in range(0, args.items, 1000):
            block = rng.standard_normal((len(ids[s : s + 1000]), dim)).astype(np.float32)
            store.write_batch("v1", ids[s : s + 1000], block, block)
        write_s = time.perf_counter() - start
        store.publish("v1")
        store.db.flush()

        singles = []
        for i in rng.integers(0, args.items, args.singles):
            t = time.perf_counter()
            store.get(ids[i])
            singles.append(time.perf_counter() - t)

        prefix = b"prx/v1/"
        many, raw = [], []

        def timed_get_many(batch: list[str]) -> None:
            t = time.perf_counter()
            res = store.get_many(batch)
            many.append(time.perf_counter() - t)
            assert res.found.all()

        def timed_raw(batch: list[str]) -> None:
            t = time.perf_counter()
            _ = store.db[[prefix + k.encode() for k in batch]]
            raw.append(time.perf_counter() - t)

        for r in range(args.rounds):  # same keys; who goes first (cold cache) alternates
            batch = [ids[i] for i in rng.integers(0, args.items, args.batch)]
            order = (timed_get_many, timed_raw) if r % 2 else (timed_raw, timed_get_many)
            for fn in order:
                fn(batch)

        api = ProxyApi(store, max_request_bytes=1 << 22, max_batch_items=args.batch)
        server = make_server(api).start()
        base = server.url
        http_single, http_many, http_binary = [], [], []
        for i in rng.integers(0, args.items, args.http_rounds * 10):
            t = time.perf_counter()
            urllib.request.urlopen(f"{base}/v1/proxies/{ids[i]}", timeout=10).read()
            http_single.append(time.perf_counter() - t)
        for r in range(2 * args.http_rounds):  # JSON and binary answers alternate
            body = json.dumps(
                {"item_ids": [ids[i] for i in rng.integers(0, args.items, args.batch)]}
            )
            accept = "application/octet-stream" if r % 2 else "application/json"
            req = urllib.request.Request(
                f"{base}/v1/proxies:batch", data=body.encode(), headers={"Accept": accept}
            )
            t = time.perf_counter()
            urllib.request.urlopen(req, timeout=30).read()
            (http_binary if r % 2 else http_many).append(time.perf_counter() - t)
        server.shutdown()
        server.server_close()
        store.close()

    def row(name: str, times: list[float], items_per_call: int) -> None:
        rows.append(
            (
                name,
                _pct(times, 0.5) * 1e3,
                _pct(times, 0.99) * 1e3,
                items_per_call * len(times) / sum(times),
            )
        )

    row("get (in process)", singles, 1)
    row(f"get_many({args.batch}) (in process)", many, args.batch)
    row(f"raw rocksdict multi-get({args.batch})", raw, args.batch)
    row("GET /v1/proxies/{id} (HTTP)", http_single, 1)
    row(f"POST /v1/proxies:batch ({args.batch}) (HTTP)", http_many, args.batch)
    row(f"POST /v1/proxies:batch binary ({args.batch}) (HTTP)", http_binary, args.batch)
    ratio = (args.batch * len(many) / sum(many)) / (args.batch * len(raw) / sum(raw))

    table = Table(title=f"ProxyStore, {args.items} items, d={dim}, {args.dtype}")
    for col in ("operation", "p50 ms", "p99 ms", "items/s"):
        table.add_column(col)
    for name, p50, p99, thr in rows:
        table.add_row(name, f"{p50:.3f}", f"{p99:.3f}", f"{thr:,.0f}")
    Console().print(table)
    print(f"write throughput: {args.items / write_s:,.0f} items/s (batches of 1000)")
    print(f"get_many / raw multi-get throughput: {ratio:.3f} (goal >= 0.8)")
    summary = {
        "bench": "store",
        "items": args.items,
        "dim": dim,
        "dtype": args.dtype,
        "write_items_per_s": round(args.items / write_s),
        **{
            name.split(" (")[0].replace(" ", "_"): {
                "p50_ms": round(p50, 4),
                "p99_ms": round(p99, 4),
                "items_per_s": round(thr),
            }
            for name, p50, p99, thr in rows
        },
        "get_many_over_raw": round(ratio, 3),
    }
    print(json.dumps(summary))
    return 0
