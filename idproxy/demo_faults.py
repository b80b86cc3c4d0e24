"""The demo's fault drill: its own killable broker, the seeded fault schedule, the faults.

``idproxy demo --kill-each`` (one round) or ``--fault-rounds N --pause-consumer`` SIGKILLs
and restarts each of ``FAULT_ORDER`` N times at seeded random moments of the live replay,
and SIGSTOPs the proxy worker past its group session timeout once.
"""

from __future__ import annotations

import contextlib
import time

from idproxy.demo_plan import Plan
from idproxy.settings import Settings


class DemoBroker:
    """The demo's broker: by the ladder, or (``--kill-each``) an Apache Kafka node the demo
    owns, so it can SIGKILL it and start it again on the same data directory and port."""

    def __init__(self, settings: Settings, plan: Plan) -> None:
        self.settings = settings
        self.plan = plan
        self.stack = contextlib.ExitStack()
        self.current = None
        self.restarts = 0

    def __enter__(self) -> DemoBroker:
        from idproxy.broker_ladder import apache_kafka, broker_from_ladder, kafka_jars
        from streams.broker import free_port

        if self.plan.kill_each:
            jars = kafka_jars(self.settings)
            if jars is None:
                raise SystemExit("--kill-each needs the Apache Kafka jars: scripts/fetch_kafka.sh")
            self.jars, self.port = jars, free_port()
            self.current = self.stack.enter_context(
                apache_kafka(jars, workdir=self.plan.run_dir / "kafka", port=self.port)
            )
        else:
            self.current = self.stack.enter_context(broker_from_ladder(self.settings))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def __getattr__(self, name: str):
        return getattr(self.current, name)

    def kill_and_restart(self) -> None:
        """SIGKILL the broker, then start it again with the same data and port."""
        from idproxy.broker_ladder import apache_kafka

        self.current.process.kill()
        self.current.process.wait(timeout=30)
        time.sleep(2)
        self.current = self.stack.enter_context(
            apache_kafka(self.jars, workdir=self.plan.run_dir / "kafka", port=self.port)
        )
        self.restarts += 1


# the fault drill of --kill-each, in order; "broker" is the Apache Kafka node itself
FAULT_ORDER = ("worker-0", "processor", "trainer-idproxy", "materializer", "broker")


PAUSE = "pause:worker-0"  # SIGSTOP the worker past its group session, then SIGCONT
PAUSE_S = 16.0  # kafka-python's default session timeout is 10 s


def fault_schedule(plan: Plan, start: float) -> tuple[list[str], list[float]]:
    """(faults, wall-clock times): each of FAULT_ORDER ``fault_rounds`` times (and the
    pause), shuffled and placed at seeded random moments of the replay, in time order.

    >>> from types import SimpleNamespace
    >>> plan = SimpleNamespace(fault_rounds=3, pause_consumer=True, fault_seed=0, replay_s=100)
    >>> faults, times = fault_schedule(plan, 0.0)
    >>> len(faults), faults.count("broker"), faults.count(PAUSE), times == sorted(times)
    (16, 3, 1, True)
    """
    import random

    rng = random.Random(plan.fault_seed)
    faults = [name for name in FAULT_ORDER for _ in range(plan.fault_rounds)]
    faults += [PAUSE] if plan.pause_consumer else []
    rng.shuffle(faults)
    times = sorted(start + plan.replay_s * rng.uniform(0.05, 0.95) for _ in faults)
    return faults, times


def inject(sup, name: str, broker: DemoBroker, settings: Settings) -> None:
    if name == PAUSE:
        print(f"demo: fault drill: SIGSTOP worker-0 for {PAUSE_S:.0f} s, then SIGCONT", flush=True)
        sup.pause("worker-0", PAUSE_S)
        sup.restarts[PAUSE] = sup.restarts.get(PAUSE, 0) + 1
        return
    _kill_and_restart(sup, name, broker, settings)


def _kill_and_restart(sup, name: str, broker: DemoBroker, settings: Settings) -> None:
    print(f"demo: fault drill: SIGKILL {name}, then restart it", flush=True)
    if name == "broker":
        broker.kill_and_restart()
        sup.restarts["broker"] = broker.restarts
        return
    sup.kill(name)
    time.sleep(1)
    sup.restart(name)
    sup.wait_ready(name, settings.demo.ready_timeout_s)  # its health endpoint
