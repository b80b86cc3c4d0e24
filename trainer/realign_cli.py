"""`idproxy realign`: Stage-1 re-alignment of φ to the ID-only ranker's drifting ID table.

The targets are the ID rows of the **ID-only** trainer (``--snapshot-of``), as the paper
aligns to the base ranker's ID embeddings; the IDProxy trainer's own table would align φ
to a table that already leans on the proxies.

One run (``--once``, or every ``realign_interval_s`` with ``--schedule``):

1. loads the newest snapshot the trainer announced on ``models`` (key
   ``snapshot/<--snapshot-of>``, default the id-only trainer's; checksum verified): item ids
   (int64, ``id_hash`` of the string ids), ID rows and update counts;
2. reads the features z of those items from the compacted ``item-features`` topic (only
   features of the current encoder version: φ maps that encoder's z), matching a
   feature record's string item id to a row by its ``id_hash``;
3. takes the current coarse head φ from the newest announced bundle (else the seeded,
   untrained heads ``ProxyService.assemble`` builds) and calls ``trainer.realign.realign_coarse_head``
   (keep ≥ τ updates, ℓ2-normalise, warm-start φ, old vs new on held-out ids, guardrail);
4. accepted: with ``trainer.realign_continuity`` (and a trained current version) rotates
   the candidate onto the current version's basis (``trainer.realign.keep_continuity``), then
   publishes p_coarse = φ_new(z), p_fine = fine(p_coarse, z_groups) for every item with
   features as a new version (named after the bundle) followed by its VersionCommit, and
   announces the new bundle (coarse replaced; pooling, projector, fine, layer groups,
   encoder name kept; fine = the newest idproxy snapshot's adaptor when it fits);
   rejected: logs why and publishes nothing.

It prints one JSON line. The encoder M is not refitted here: with ``encoder_train_mode``
``lora`` a refit changes M, hence the features and ``encoder_version``; the new features
would then have to be backfilled by re-encoding every item (replay the compacted ``items``
history, or the store's item list, through workers running the new bundle) before any
proxy of the new version could be published. See docs/TRAINER.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from pathlib import Path

from idproxy.settings import Settings, tiny_profile

log = logging.getLogger(__name__)

REALIGN_PREFIX = "realign-"  # the proxies versions a re-alignment publishes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="run one re-alignment now")
    when.add_argument("--schedule", action="store_true", help="run every interval until SIGTERM")
    parser.add_argument(
        "--interval-s", type=float, help="override settings.trainer.realign_interval_s"
    )
    parser.add_argument(
        "--snapshot-of",
        default="id-only",
        help="the trainer variant whose announced ID table φ is aligned to (default id-only)",
    )
    parser.add_argument("--state-dir", help="scheduler state (default <cache_dir>/realign)")
    parser.add_argument("--tiny", action="store_true", help="tiny random encoder heads (tests)")
    parser.add_argument(
        "--shuffle-targets", action="store_true", help="deliberately bad candidate (tests)"
    )


def realign_once(settings: Settings, broker, args: argparse.Namespace) -> dict:
    """One re-alignment run; returns the JSON-able result."""
    import torch

    from proxy_model.artifacts import ArtifactStore, module_states
    from proxy_model.heads import FineHead
    from proxy_model.service import ProxyService
    from streams.kafka_config import common_config, producer_config
    from streams.model_feed import BUNDLE_KEY, ModelFeed, publish_artifact, snapshot_key
    from streams.sample_batch import id_hash
    from streams.topics import ensure_topics
    from trainer.content import stage1_config
    from trainer.item_cache import ContentReader, ItemCache
    from trainer.realign import keep_continuity, realign_coarse_head
    from trainer.reproxy import publish_proxies

    cache_dir = Path(settings.cache_dir)
    started = time.time()
    topics = ensure_topics(settings, common_config(settings, broker))
    models = ModelFeed(settings, broker, topics)
    try:
        models.catch_up()
        key = snapshot_key(args.snapshot_of)
        snapshot = models.load(models.latest(key))
        bundle = models.load(models.latest(BUNDLE_KEY))
    finally:
        models.close()
    if snapshot is None:
        raise FileNotFoundError(f"no usable snapshot announced under {key!r} yet")
    table_state = snapshot.states["item_table"]
    ids = table_state["ids"].tolist()
    table, counts = table_state["weight"], table_state["counts"]

    if args.tiny:
        settings = tiny_profile(settings)
    svc = ProxyService.from_settings(settings, bundle)
    cache = ItemCache()
    state_dir = Path(args.state_dir or cache_dir / "realign")
    reader = ContentReader(  # a killer record is skipped after N deaths (crash-loop quarantine)
        settings, broker, topics, cache, markers=state_dir / "inflight-content.json"
    )
    reader.catch_up()
    reader.close()
    current = [
        i for i in cache.with_features() if cache.items[i].encoder_version == svc.encoder_version
    ]
    row_of = {key: r for r, key in enumerate(ids)}  # the table's int64 ids (id_hash) -> row
    hashed = {i: id_hash(i) for i in current}
    both = [i for i in current if hashed[i] in row_of]

    def stack(items: list[str], attr: str) -> torch.Tensor:
        return torch.stack([torch.from_numpy(getattr(cache.items[i], attr)) for i in items])

    result: dict = {
        "job": "realign",
        "snapshot": snapshot.id,
        "checkpoint": snapshot.manifest.get("checkpoint"),
        "current_version": svc.proxy_version,
        "items_with_features": len(current),
        "items_in_table": len(ids),
        "shuffle_targets": args.shuffle_targets,
    }
    if len(both) < 10:
        return {
            **result,
            "accepted": False,
            "reason": f"only {len(both)} items have features and ID rows",
        }
    rows = torch.tensor([row_of[hashed[i]] for i in both])
    config = stage1_config(settings, settings.stage1.seed)
    t = settings.trainer
    try:
        outcome = realign_coarse_head(
            stack(both, "z"),
            table[rows],
            counts[rows],
            svc.coarse,
            config,
            min_updates=settings.stage1.min_updates,
            holdout_fraction=t.realign_holdout_fraction,
            tolerance=t.realign_tolerance,
            shuffle_targets=args.shuffle_targets,
        )
    except ValueError as exc:  # too few ids with >= tau updates
        return {**result, "accepted": False, "reason": str(exc)}
    result.update(
        accepted=outcome.accepted,
        reason=outcome.reason,
        n_targets=outcome.n_targets,
        old={"recall@10": outcome.current.recall_at_k, "cosine": outcome.current.mean_cosine},
        new={
            "recall@10": outcome.candidate_report.recall_at_k,
            "cosine": outcome.candidate_report.mean_cosine,
        },
    )
    if not outcome.accepted:
        log.warning("re-alignment rejected: %s", outcome.reason)
        return result

    z_all = stack(current, "z")
    if settings.trainer.realign_continuity and not svc.proxy_version.startswith("untrained"):
        rotation = keep_continuity(outcome.candidate, svc.coarse, z_all)
        eye = torch.eye(rotation.shape[0])
        result["continuity_rotation_fro"] = round(float(torch.linalg.norm(rotation - eye)), 4)
    fine = svc.fine
    trained = snapshot.states.get("fine_head", {})
    if trained and all(trained[k].shape == v.shape for k, v in fine.state_dict().items()):
        fine = FineHead(
            svc.featurizer.hidden_size,
            svc.id_dim,
            trained["adaptor.0.weight"].shape[0],
            len(svc.featurizer.layer_groups),
            settings.trainer.online_fine_input,
        )
        fine.load_state_dict(trained)
    fine.eval()
    modules = {"pooling": svc.featurizer.pooling, "coarse": outcome.candidate, "fine": fine}
    if svc.featurizer.encoder.projector is not None:
        modules["projector"] = svc.featurizer.encoder.projector
    manifest = {
        "encoder_name": svc.featurizer.encoder.name,
        "layer_groups": svc.featurizer.layer_groups,
        "realigned_from_snapshot": snapshot.id,
        "fine_trained": bool(trained),
        "announced": True,  # published below with its VersionCommit; workers append
        "fine_input": fine.input_transform,
    }
    states = module_states(modules)
    version = f"{REALIGN_PREFIX}{uuid.uuid4().hex[:12]}"  # the proxies version the bundle serves
    manifest["proxy_version"] = version
    with torch.no_grad():
        p_coarse = outcome.candidate(z_all)
        p_fine = fine(p_coarse, stack(current, "z_groups"))
    from kafka import KafkaProducer

    producer = KafkaProducer(**producer_config(settings, broker))
    try:  # the version first: a worker loading the bundle appends to a published version
        publish_proxies(producer, topics, version, current, cache, p_coarse, p_fine)
        store = ArtifactStore.from_settings(settings)
        parent = bundle.id if bundle else None
        publish_artifact(
            producer,
            topics.models,
            store,
            states,
            manifest,
            key=BUNDLE_KEY,
            producer_name="realign",
            parent=parent,
        )
    finally:
        producer.close()
    return {
        **result,
        "new_version": version,
        "published_items": len(current),
        "seconds": round(time.time() - started, 2),
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker import external_broker

    if not settings.kafka.bootstrap:
        print("error: set IDPROXY_KAFKA_BOOTSTRAP (e.g. from `idproxy broker`)")
        return 2
    broker = external_broker(settings)
    if args.once:
        print(json.dumps(realign_once(settings, broker, args)), flush=True)
        return 0

    from streams.lifecycle import stop_signals
    from trainer.scheduler import PersistentIntervalJob

    stopping = [False]
    interval = args.interval_s or settings.trainer.realign_interval_s

    def job() -> None:
        try:
            print(json.dumps(realign_once(settings, broker, args)), flush=True)
        except FileNotFoundError as exc:  # no trainer snapshot announced yet
            print(json.dumps({"job": "realign", "accepted": False, "reason": str(exc)}), flush=True)

    state_dir = Path(args.state_dir or Path(settings.cache_dir) / "realign")
    scheduler = PersistentIntervalJob(job, interval, state_dir)
    scheduler.start()
    print(f"realign scheduled every {interval} s (state {state_dir})", flush=True)
    with stop_signals(lambda signum, frame: stopping.__setitem__(0, True)):
        while not stopping[0]:
            time.sleep(0.2)
    scheduler.shutdown(wait=True)
    return 0
