"""`idproxy bootstrap`: the deployment of paper §3.2.4, run on the history period.

Before the live stream, on the ``samples`` already in the topic (the history period):

1. **ID-only ranker.** The id-only online trainer consumes the history samples until the
   topic is idle, checkpoints (offsets included) and stops. This is the base ranker whose
   ID table Stage 1 aligns to.
2. **Stage 1.** ``realign --once`` on the snapshot that checkpoint announced: φ is fitted
   (PAL) to the ID table's rows with ≥ τ updates, ℓ2-normalised, on the cached features z
   from ``item-features``; p_coarse, p_fine of every item are published as a new proxies
   version and the accepted bundle is announced on ``models``.
3. **Stage 2 pretraining.** The idproxy online trainer consumes the same history samples
   with the new p_coarse: the ranker, the fusion, the adaptor φ̃ and the gate learn; it
   checkpoints and re-proxies, so the bundle's fine head and the published p_fine are the
   pretrained ones.

Afterwards ``idproxy trainer --variant id-only|idproxy`` on the same state folders resume
from these checkpoints at the end of the history period, and the scheduled re-alignment
(``idproxy realign --schedule``) keeps φ aligned to the live ID-only table. Each variant saw the history once, so the live comparison is paired.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id-only-state", required=True, help="state folder of the id-only trainer"
    )
    parser.add_argument(
        "--idproxy-state", required=True, help="state folder of the idproxy trainer"
    )
    parser.add_argument(
        "--idle-exit", type=float, default=5.0, help="a trainer stops after this many idle seconds"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder heads (tests)")


def _train_history(settings: Settings, broker, args, variant: str, state: str) -> dict:
    from trainer.online import OnlineTrainer

    trainer = OnlineTrainer(
        settings,
        broker,
        variant=variant,
        state_dir=Path(state),
        group=f"idproxy-trainer-{variant}",
        reproxy=True,
    )
    print(f"bootstrap: {variant} ranker on the history period", flush=True)
    summary = trainer.run(idle_exit_s=args.idle_exit)
    keys = ("samples", "cum_auc_all", "cum_auc_new", "checkpoint", "proxy_version")
    return {k: summary.get(k) for k in keys}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import external_broker
    from trainer.realign_cli import realign_once

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    broker = external_broker(settings)
    started = time.time()
    result: dict = {"job": "bootstrap"}
    result["id_only"] = _train_history(settings, broker, args, "id-only", args.id_only_state)
    print("bootstrap: Stage 1 (φ on the id-only ranker's ID table)", flush=True)
    realign_args = argparse.Namespace(
        snapshot_of="id-only",
        tiny=args.tiny,
        shuffle_targets=False,
        state_dir=None,  # realign's own default
    )
    stage1 = realign_once(settings, broker, realign_args)
    result["stage1"] = stage1
    if not stage1.get("accepted"):
        print(f"bootstrap: Stage 1 not accepted ({stage1.get('reason')}); φ stays", flush=True)
    result["idproxy"] = _train_history(settings, broker, args, "idproxy", args.idproxy_state)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result), flush=True)
    return 0
