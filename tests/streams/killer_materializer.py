"""A materializer whose store kills its own process (``os._exit``) when a write holds the
item ``killer``: what a native crash in RocksDB or the OOM killer does. The crash-loop
quarantine test runs it again and again on the same partitions and store.

``python -m tests.streams.killer_materializer GROUP IDLE_EXIT_S`` (settings, store path
and broker from the ``IDPROXY_*`` environment, as for ``idproxy materialize``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

KILL_CODE = 87
KILL_ITEM = "killer"


class KillingStore:
    """A ProxyStore, except that a ``write_batch`` with ``KILL_ITEM`` kills the process."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def write_batch(self, version: str, item_ids: Sequence[str], *args, **kwargs) -> None:
        if KILL_ITEM in item_ids:
            print(f"killing myself on a batch of {len(item_ids)}", flush=True)
            os._exit(KILL_CODE)
        self.inner.write_batch(version, item_ids, *args, **kwargs)


def main() -> int:
    from idproxy.settings import load_settings
    from store import ProxyStore
    from streams.broker import Broker, external_broker
    from streams.materializer import Materializer

    group, idle_exit_s = sys.argv[1], float(sys.argv[2])
    settings = load_settings()
    broker = external_broker(settings)
    # a dead member holds its partitions until its session expires: keep that short
    quirks = {**broker.quirks, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
    broker = Broker(bootstrap=broker.bootstrap, rung=broker.rung, quirks=quirks)
    store = ProxyStore(settings.store.path, dim=settings.model.id_dim)
    try:
        materializer = Materializer(settings, broker, KillingStore(store), group_id=group)
        print("ready", flush=True)
        materializer.run(idle_exit_s=idle_exit_s)
        print(
            f"stopped: {materializer.written} written, {materializer.dlq.count} dead letters",
            flush=True,
        )
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
