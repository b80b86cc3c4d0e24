"""A proxy worker on the tiny model whose model kills its own process (``os._exit``) on
items titled ``kill me``: what a native crash or the OOM killer does. The crash-loop
quarantine test runs it again and again on the same partitions.

``python -m tests.streams.killer_worker IDLE_EXIT_S`` (settings and broker from the
``IDPROXY_*`` environment, as for ``idproxy worker``).
"""

from __future__ import annotations

import os
import sys

KILL_CODE = 86


class KillingService:
    """The tiny service, except that it kills the process on a ``kill me`` item."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, items):
        if any(item.text.startswith("kill me") for item in items):
            print("killing myself", flush=True)
            os._exit(KILL_CODE)
        return self.inner.run(items)


def main() -> int:
    from idproxy.settings import load_settings
    from proxy_model.service import ProxyService
    from streams.broker import Broker, external_broker
    from streams.worker import ProxyWorker

    settings = load_settings()
    broker = external_broker(settings)
    # a dead member holds its partitions until its session expires: keep that short
    quirks = {**broker.quirks, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
    broker = Broker(bootstrap=broker.bootstrap, rung=broker.rung, quirks=quirks)
    service = KillingService(ProxyService.tiny(id_dim=settings.model.id_dim))
    worker = ProxyWorker(settings, broker, service, client_id=f"killer-{os.getpid()}")
    print("ready", flush=True)
    stats = worker.run(idle_exit_s=float(sys.argv[1]))
    print(f"stopped: {stats.items} items, {stats.dead_letters} dead letters", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
