"""`idproxy broker`: start a broker by the ladder and keep it up until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rung", type=int, choices=[2, 3, 4], help="force a rung")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from idproxy.broker_ladder import broker_from_ladder

    if args.rung:
        settings.kafka.rung = args.rung
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with broker_from_ladder(settings) as broker:
        exports = " ".join(f"{k}={v}" for k, v in broker.child_env().items())
        print(f"broker rung {broker.rung} ({broker.name}) at {broker.bootstrap}", flush=True)
        print(f"export {exports}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0
