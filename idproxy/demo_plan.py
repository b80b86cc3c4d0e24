"""`Plan`: what one `idproxy demo` run does, resolved from its arguments and ``settings.demo``."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from idproxy.settings import Settings, tiny_profile


@dataclass(frozen=True)
class Plan:
    """What one demo run does (resolved from the arguments and ``settings.demo``)."""

    ratings: int
    items: int
    clicks: int
    replay_s: float
    speed: float
    workers: int
    realign_interval_s: float
    checkpoint_every_s: float
    drain_timeout_s: float
    upload_lead_days: float
    catalogue: tuple[str, ...]  # items of the launch catalogue (uploaded by go-live)
    history: int  # ratings of the history period (bootstrapped on, not scored)
    catalogue_timeout_s: float
    kill_each: bool  # the broker is the demo's own Apache Kafka node (it can be killed)
    fault_rounds: int  # kills of each component (0 = no drill)
    pause_consumer: bool
    fault_seed: int
    bad_share: float
    tiny: bool
    id_dim: int
    run_dir: Path


def make_plan(args: argparse.Namespace, settings: Settings) -> Plan:
    """Counts the replayed items and picks the time compression for ``replay_s``."""
    from idproxy.movielens import load_movielens
    from streams.publish import movielens_events

    d = settings.demo
    data = load_movielens()
    ratings = min(args.ratings or (d.quick_ratings if args.quick else d.ratings), len(data.users))
    replay_s = args.replay_s or (d.quick_replay_s if args.quick else d.replay_s)
    history = int(ratings * d.history_fraction)
    span = float(data.timestamps[ratings - 1] - data.timestamps[history])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lead_days = d.quick_upload_lead_days if args.quick else d.upload_lead_days
    catalogue = tuple(
        e.item_id for *_, e, _ in movielens_events(ratings, lead_days * 86400, "catalogue", history)
    )
    return Plan(
        ratings=ratings,
        items=len(set(data.items[:ratings].tolist())),
        clicks=ratings,
        replay_s=replay_s,
        speed=max(span / replay_s, 1e-9),
        workers=args.workers or d.workers,
        realign_interval_s=d.quick_realign_interval_s if args.quick else d.realign_interval_s,
        checkpoint_every_s=d.quick_checkpoint_every_s if args.quick else d.checkpoint_every_s,
        drain_timeout_s=d.quick_drain_timeout_s if args.quick else d.drain_timeout_s,
        upload_lead_days=lead_days,
        catalogue=catalogue,
        history=history,
        catalogue_timeout_s=d.quick_catalogue_timeout_s if args.quick else d.catalogue_timeout_s,
        kill_each=args.kill_each or bool(args.fault_rounds),
        fault_rounds=args.fault_rounds or (1 if args.kill_each else 0),
        pause_consumer=args.pause_consumer,
        fault_seed=args.fault_seed,
        bad_share=args.bad_share,
        tiny=args.tiny,
        id_dim=(tiny_profile(settings) if args.tiny else settings).model.id_dim,
        run_dir=Path(args.run_dir or Path(settings.run_dir) / f"demo-{stamp}").resolve(),
    )
