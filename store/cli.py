"""`idproxy store versions|get|publish|rollback|gc|serve`."""

from __future__ import annotations

import argparse
import json

from idproxy.settings import Settings
from store.base import ProxyStoreProtocol


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", help="store directory (default: settings.store.path)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("versions", help="list versions and the active pointer")
    get = sub.add_parser("get", help="print one item's proxies")
    get.add_argument("item_id")
    get.add_argument("--version")
    for name, text in (
        ("publish", "publish a complete staged version"),
        ("rollback", "make a retained version active"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("version")
    sub.add_parser("gc", help="delete versions beyond the retention")
    serve = sub.add_parser("serve", help="run the HTTP read API (read-only)")
    serve.add_argument("--host", help="bind address (default settings.store.http_host)")
    serve.add_argument("--port", type=int, help="port (default settings.store.http_port)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from store.errors import StoreError
    from store.factory import open_store

    read_only = args.action in ("versions", "get", "serve")
    try:
        store = open_store(settings, args.path, read_only=read_only)
    except StoreError as exc:
        print(f"error: {exc}")
        return 2
    try:
        if args.action == "serve":
            return _serve(store, settings, args)
        if args.action == "versions":
            out = {
                "active": store.active_version(),
                "previous": store.previous_version(),
                "versions": [v.model_dump() for v in store.versions()],
            }
        elif args.action == "get":
            rec = store.get(args.item_id, args.version)
            out = (
                None
                if rec is None
                else {
                    "item_id": rec.item_id,
                    "version": rec.version,
                    "p_coarse": rec.p_coarse.tolist(),
                    "p_fine": rec.p_fine.tolist(),
                }
            )
        elif args.action == "publish":
            out = store.publish(args.version).model_dump()
        elif args.action == "rollback":
            out = store.rollback(args.version).model_dump()
        else:
            out = {"removed": store.gc()}
        print(json.dumps(out, indent=2))
        return 0 if out is not None else 1
    except StoreError as exc:
        print(f"error: {exc}")
        return 2
    finally:
        store.close()


def _serve(store: ProxyStoreProtocol, settings: Settings, args: argparse.Namespace) -> int:
    from store.api_server import InsecureBindError, make_server
    from store.http_api import ProxyApi

    s = settings.store
    api = ProxyApi(
        store,
        max_request_bytes=s.max_request_bytes,
        max_batch_items=s.max_batch_items,
        refresh_interval_s=s.refresh_interval_s,
        token=s.api_token.get_secret_value() if s.api_token else None,
    )
    host = args.host or s.http_host
    try:
        server = make_server(api, host, args.port if args.port is not None else s.http_port)
    except (InsecureBindError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    auth = "bearer token required" if api.token else "no token (loopback only)"
    print(f"serving proxies from {store.path} on {server.url} ({auth}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()  # uvicorn re-raises the SIGINT it handled once it stops
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
