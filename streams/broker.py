"""A Kafka broker as the runtime sees it: its bootstrap address, the rung of the broker
ladder it came from, and the client quirks that broker needs.

Services get theirs from settings (:func:`external_broker`); the ladder that starts one
for development, tests and the demo is dev tooling (``idproxy/broker_ladder.py``).
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field

from idproxy.settings import Settings

RUNG_NAMES = {1: "external", 2: "testcontainers", 3: "apache-kafka", 4: "tansu"}

TANSU_QUIRKS = {
    # JoinGroup waits ~session_timeout/2 on Tansu
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    # ListOffsets "latest" is wrong after multi-message batches (faust needs this)
    "faust_producer_max_batch_size": 1,
}


@dataclass(frozen=True)
class Broker:
    """A reachable broker: its bootstrap address, the rung it came from, client quirks.

    ``child_env()`` is what a child process needs to reach the same broker.
    """

    bootstrap: str
    rung: int
    quirks: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return RUNG_NAMES[self.rung]

    def child_env(self) -> dict[str, str]:
        env = {"IDPROXY_KAFKA_BOOTSTRAP": self.bootstrap}
        if self.quirks:
            env["IDPROXY_KAFKA_EMBEDDED_TANSU"] = "1"
        return env

    @property
    def durable(self) -> bool:
        """False for Tansu's memory storage: a restart loses everything."""
        return self.rung != 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def external_broker(settings: Settings) -> Broker:
    """Rung 1 for child processes: the bootstrap from settings, Tansu quirks if it is one."""
    if not settings.kafka.bootstrap:
        raise RuntimeError("IDPROXY_KAFKA_BOOTSTRAP is not set")
    quirks = TANSU_QUIRKS if settings.kafka.embedded_tansu else {}
    return Broker(bootstrap=settings.kafka.bootstrap, rung=1, quirks=quirks)
