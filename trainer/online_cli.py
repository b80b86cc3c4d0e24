"""`idproxy trainer`: the online Stage-2 trainer (see trainer/online.py and docs/TRAINER.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", help="checkpoints and metrics (default <cache_dir>/trainer)")
    parser.add_argument("--variant", choices=["idproxy", "id-only"], default="idproxy")
    parser.add_argument("--group", help="consumer group (default idproxy-trainer-<variant>)")
    parser.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0 = off")
    parser.add_argument("--no-reproxy", action="store_true", help="never publish re-proxies")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import external_broker
    from trainer.online import OnlineTrainer

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    cache = Path(settings.cache_dir)
    trainer = OnlineTrainer(
        settings,
        external_broker(settings),
        variant=args.variant,
        state_dir=Path(args.state_dir or cache / "trainer"),
        group=args.group or f"idproxy-trainer-{args.variant}",
        reproxy=not args.no_reproxy,
        metrics_port=args.metrics_port,
    )
    print(f"trainer ready ({args.variant}, resumed from {trainer.last_checkpoint})", flush=True)
    summary = trainer.run(idle_exit_s=args.idle_exit)
    print(json.dumps(summary), flush=True)
    return 0
