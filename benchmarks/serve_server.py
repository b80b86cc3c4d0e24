"""A read-API server process for `idproxy bench serve`: the FastAPI app or the legacy baseline.

``python -m benchmarks.serve_server --impl fastapi|legacy --store DIR --dim D --port P``
opens the store as a RocksDB secondary (read-only) and serves 127.0.0.1:P until SIGTERM.

FastAPI runs under uvicorn's own process supervisor (``--workers``): the parent binds the
port and each worker process builds the app from `app_factory`, with its own secondary
instance of the store (environment ``IDPROXY_BENCH_*``). The tuning, explained in
docs/STORE.md: access log off, uvicorn's ``auto`` HTTP parser and event loop (``httptools``
and ``uvloop``, both dependencies; ``--http h11 --loop asyncio`` for the pure-Python ones),
keep-alive 30 s so a client's connection is reused, and workers = CPU count so both cores
serve on a 2-core machine.
The legacy server runs as written: one ``ThreadingHTTPServer`` process, a thread per
connection, HTTP/1.0 (one request per connection).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

ENV = "IDPROXY_BENCH_"


def _open_api(legacy: bool):  # -> store.http_api.ProxyApi or the legacy one
    from store import ProxyStore

    store = ProxyStore(os.environ[ENV + "STORE"], dim=int(os.environ[ENV + "DIM"]), read_only=True)
    cls = _legacy_api() if legacy else _fastapi_api()
    return cls(
        store,
        max_request_bytes=1 << 22,
        max_batch_items=int(os.environ[ENV + "MAX_BATCH"]),
        refresh_interval_s=float(os.environ[ENV + "REFRESH_S"]),
    )


def _legacy_api() -> type:
    from benchmarks.legacy_http_api import ProxyApi

    return ProxyApi


def _fastapi_api() -> type:
    from store.http_api import ProxyApi

    return ProxyApi


def app_factory():  # -> FastAPI; called by uvicorn in each worker process
    """The FastAPI app over this process's own secondary instance of the store."""
    from store.http_api import create_app

    return create_app(_open_api(legacy=False))


def _serve_legacy(port: int) -> None:
    from benchmarks.legacy_http_api import make_server

    server = make_server(_open_api(legacy=True), "127.0.0.1", port)

    def stop(*_: object) -> None:  # shutdown() blocks until serve_forever returns
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever(poll_interval=0.1)
    server.server_close()


def _serve_fastapi(port: int, workers: int, http: str, loop: str) -> None:
    import uvicorn

    uvicorn.run(
        "benchmarks.serve_server:app_factory",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        http=http,
        loop=loop,
        access_log=False,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=30,
        backlog=4096,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["fastapi", "legacy"], required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--http", default="auto", help="uvicorn HTTP parser (auto, h11, httptools)")
    parser.add_argument("--loop", default="auto", help="uvicorn event loop (auto, asyncio, uvloop)")
    parser.add_argument("--refresh-s", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=1000)
    args = parser.parse_args(argv)
    os.environ.update(
        {
            ENV + "STORE": args.store,
            ENV + "DIM": str(args.dim),
            ENV + "REFRESH_S": str(args.refresh_s),
            ENV + "MAX_BATCH": str(args.max_batch),
        }
    )
    if args.impl == "legacy":
        _serve_legacy(args.port)
    else:
        _serve_fastapi(args.port, args.workers, args.http, args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
