"""`idproxy bench trainer`: samples/s of the online trainer loop vs a bare PyTorch loop.

Both sides train the same model (same seed, same settings) on the same mini-batches held
in memory:

* **trainer loop** — ``trainer.online_core.TrainerCore.process`` as the trainer runs it on
  ``samples`` records (``SampleBatch`` frames of ``--record-samples`` samples, whole records
  per batch as the trainer polls them): frame decoding and validation, de-duplication by
  sample key, id -> row in the growing ID tables, content gathering from the item cache,
  the forward/backward/Adam step, windowed AUC/LogLoss and the prediction stream;
* **bare loop** — the batches pre-built as tensors, then only forward, BCE, backward and
  ``optimizer.step()``.

The two loops alternate in blocks of ``--block`` batches within one pass over the stream
(:func:`paired_run`), so a drift of the machine's speed hits both alike; a pass's ratio is
the bare loop's seconds over the trainer's on the same samples.

Threads: the trainer runs with its setting ``IDPROXY_TRAINER_THREADS``; the bare loop with
torch's own default (all cores; ``--bare-threads``), so the trainer is compared with the
bare loop at its best.

Kafka polling and checkpoints are not in either number (checkpoints are every N batches
and are measured by the trainer's own logs). Sizes default to MovieLens-100K (943 users,
1,682 items, 100,000 samples: users' histories fill up to ``history_len`` as in the real
stream) with the SmolLM2 feature sizes (D = 576, G = 3, d = settings.model.id_dim);
features and clicks are random.
The goal is a ratio trainer / bare ≥ 0.85 (:data:`GOAL_RATIO`), the median over
``--repeats`` passes. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import namedtuple
from dataclasses import dataclass

from idproxy.settings import Settings

Record = namedtuple("Record", "value partition offset")
GOAL_RATIO = 0.85


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", type=int, default=100_000, help="stream length (MovieLens-100K: 100,000)"
    )
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--hidden", type=int, default=576, help="D of the cached features")
    parser.add_argument("--repeats", type=int, default=5, help="passes per variant (median)")
    parser.add_argument(
        "--block", type=int, default=20, help="batches per block: trainer and bare alternate"
    )
    parser.add_argument(
        "--bare-threads",
        type=int,
        default=None,
        help="torch threads of the bare loop (default: torch's own default, all cores)",
    )
    parser.add_argument(
        "--record-samples",
        type=int,
        default=64,
        help="samples per samples record (one SampleBatch frame)",
    )
    parser.add_argument("--tiny", action="store_true", help="small sizes (smoke test)")


def filled_cache(item_ids: list[str], z, z_groups, p_coarse):
    """An ItemCache holding given content, as the trainer would after reading the topics.

    z [N, D], z_groups [N, G, D], p_coarse [N, d] float32 numpy arrays, rows = ``item_ids``.
    """
    from streams.events import ItemFeaturesRecord, ProxyRecordEvent
    from trainer.item_cache import ItemCache

    cache = ItemCache()
    for row, item in enumerate(item_ids):
        head = dict(item_id=item, encoder_version="bench", uploaded_at=0, produced_at=0)
        cache.put_features(
            item, ItemFeaturesRecord(**head), {"z": z[row], "z_groups": z_groups[row]}
        )
        cache.put_proxy(
            item, ProxyRecordEvent(proxy_version="bench", **head), {"p_coarse": p_coarse[row]}
        )
    return cache


def world(args, settings):
    """-> (ItemCache with random content, samples records of ``args.record_samples``
    samples each) for the bench sizes."""
    import numpy as np

    from streams.sample_batch import SampleBatch, id_hashes, sample_key

    rng = np.random.default_rng(0)
    d, groups = settings.model.id_dim, settings.model.n_layer_groups
    z_groups = rng.standard_normal((args.items, groups, args.hidden)).astype(np.float32)
    p_coarse = rng.standard_normal((args.items, d)).astype(np.float32)
    p_coarse /= np.linalg.norm(p_coarse, axis=1, keepdims=True)
    ids = [str(i) for i in range(args.items)]
    cache = filled_cache(ids, z_groups.mean(1), z_groups, p_coarse)
    item_key = id_hashes(ids)
    user_key = id_hashes(f"u{u}" for u in range(args.users))
    pick = random.Random(0)
    n, h = args.samples, settings.trainer.history_len
    users, items, labels = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int8)
    interactions, history = np.zeros(n, np.int32), np.zeros((n, h), np.int64)
    history_count = np.zeros(n, np.int8)
    clicked: dict[int, list[int]] = {}
    counts = [0] * args.items
    for k in range(n):
        u, i = pick.randrange(args.users), pick.randrange(args.items)
        label = int(pick.random() < (0.7 if (u + i) % 3 == 0 else 0.2))
        hist = clicked.setdefault(u, [])[-h:]
        users[k], items[k], labels[k] = user_key[u], item_key[i], label
        interactions[k], history_count[k] = counts[i], len(hist)
        history[k, : len(hist)] = item_key[hist]
        counts[i] += 1
        if label:
            clicked[u].append(i)
    columns = dict(
        sample_key=np.array([sample_key(0, k) for k in range(n)], np.int64),
        user=users,
        item=items,
        label=labels,
        ts=np.arange(n, dtype=np.float64),
        item_interactions=interactions,
        item_age_s=np.arange(n, dtype=np.float32),
        item_known=np.ones(n, bool),
        history=history,
        history_count=history_count,
    )
    step = max(1, args.record_samples)
    records = [
        Record(SampleBatch(**{c: a[k : k + step] for c, a in columns.items()}).encode(), 0, r)
        for r, k in enumerate(range(0, n, step))
    ]
    return cache, records


def batches_of(records: list, size: int) -> list[list]:
    """Records grouped as the trainer polls them: whole records until their samples reach
    ``size``."""
    from trainer.sample_decoder import record_samples

    out, batch, samples = [], [], 0
    for r in records:
        batch.append(r)
        samples += record_samples(r.value)
        if samples >= size:
            out.append(batch)
            batch, samples = [], 0
    return out + ([batch] if batch else [])


def model_and_optimizer(settings, variant: str, hidden: int):
    """A fresh OnlineRanker of ``variant`` with the trainer's settings, and its Adam."""
    from trainer.online_core import attach_optimizer
    from trainer.online_model import OnlineRanker
    from trainer.online_state import fresh_shape

    t = settings.trainer
    shape = fresh_shape(settings, variant, (hidden, settings.model.n_layer_groups), None)
    model = OnlineRanker(shape, variant, seed=t.online_seed)
    return model, attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale)


@dataclass
class PairedRun:
    """One pass over the stream, trainer and bare loop alternating block by block.

    trainer_s / bare_s: seconds per block (same samples on both sides); the models after.
    """

    samples: int
    trainer_s: list[float]
    bare_s: list[float]
    trainer_model: object
    bare_model: object

    @property
    def ratio(self) -> float:
        """Trainer samples/s over bare samples/s on the whole pass (= bare s / trainer s)."""
        return sum(self.bare_s) / sum(self.trainer_s)


def paired_run(settings, variant, hidden, cache, chunks, *, block: int, bare_threads: int):
    """Trains two fresh models of ``variant`` over ``chunks``: ``TrainerCore`` and a bare loop.

    The two alternate every ``block`` chunks, so a drift of the machine's speed (seconds to
    minutes) hits both sides alike. Trainer block: ``process`` each chunk (the records of
    one batch) at ``settings.trainer.threads`` torch threads. Bare block: its batches are
    built untimed from the same records, then forward, BCE, backward and
    ``optimizer.step()`` at ``bare_threads`` torch threads (for idproxy also the item rows'
    update counts, an input of the fusion's warmth weight).
    """
    import torch
    import torch.nn.functional as F

    from trainer.online_core import BatchBuilder, TrainerCore
    from trainer.sample_decoder import SampleDecoder

    model, optimizer = model_and_optimizer(settings, variant, hidden)
    core = TrainerCore(settings, model, optimizer, cache)
    bare, bare_optimizer = model_and_optimizer(settings, variant, hidden)
    builder = BatchBuilder(bare, cache)
    decoder = SampleDecoder.from_settings(settings.trainer)
    trainer_s, bare_s, n = [], [], 0
    for k in range(0, len(chunks), block):
        part = chunks[k : k + block]
        torch.set_num_threads(settings.trainer.threads)
        started = time.perf_counter()
        for chunk in part:
            core.process(chunk)
        trainer_s.append(time.perf_counter() - started)

        batches = [builder.build(decoder.decode([r.value for r in chunk])) for chunk in part]
        n += sum(len(b.labels) for b in batches)
        torch.set_num_threads(bare_threads)
        started = time.perf_counter()
        for batch in batches:
            loss = F.binary_cross_entropy_with_logits(bare(batch), batch.labels)
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()
            if variant == "idproxy":  # item update counts are the fusion's warmth input
                bare.item_table.count(batch.items, batch.history)
        bare_s.append(time.perf_counter() - started)
    if core.samples != n:
        raise RuntimeError(f"the trainer trained {core.samples} samples, the bare loop {n}")
    return PairedRun(n, trainer_s, bare_s, model, bare)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    if args.block < 1 or args.repeats < 1 or args.record_samples < 1:
        raise SystemExit("bench trainer: --block, --repeats and --record-samples must be ≥ 1")
    if args.tiny:
        args.samples, args.users, args.items, args.hidden = 2000, 100, 200, 32
    threads = settings.trainer.threads
    bare_threads = args.bare_threads or torch.get_num_threads()  # torch's default: all cores
    console = Console()
    cache, records = world(args, settings)
    size = settings.trainer.online_batch_size
    chunks = batches_of(records, size)
    for variant in ("idproxy", "id-only"):  # warm-up: first-call costs out of the timings
        paired_run(
            settings, variant, args.hidden, cache, chunks[:3], block=1,
            bare_threads=bare_threads,
        )  # fmt: skip
    runs: dict[str, list[PairedRun]] = {"idproxy": [], "id-only": []}
    jobs = [v for _ in range(args.repeats) for v in runs]
    for variant in tqdm(jobs, desc="bench trainer", unit="pass"):
        run = paired_run(
            settings, variant, args.hidden, cache, chunks, block=args.block,
            bare_threads=bare_threads,
        )  # fmt: skip
        runs[variant].append(run)

    table = Table(
        title=f"online trainer, {args.samples} samples in records of {args.record_samples},"
        f" batch {size},"
        f" torch threads {threads} (trainer) / {bare_threads} (bare), blocks of"
        f" {args.block} batches, median of {args.repeats} passes"
    )
    for col in ("variant", "trainer loop samples/s", "bare loop samples/s", "ratio", "range"):
        table.add_column(col)
    summary: dict = {
        "bench": "trainer",
        "samples": args.samples,
        "batch": size,
        "block": args.block,
        "hidden": args.hidden,
        "record_samples": args.record_samples,
        "threads": threads,
        "bare_threads": bare_threads,
    }
    for variant, passes in runs.items():
        ratios = [r.ratio for r in passes]
        ratio = statistics.median(ratios)
        tr = statistics.median(r.samples / sum(r.trainer_s) for r in passes)
        bare = statistics.median(r.samples / sum(r.bare_s) for r in passes)
        table.add_row(
            variant, f"{tr:,.0f}", f"{bare:,.0f}", f"{ratio:.3f}",
            f"{min(ratios):.3f}–{max(ratios):.3f}",
        )  # fmt: skip
        key = variant.replace("-", "_")
        summary.update(
            {
                f"{key}_trainer_sps": round(tr, 1),
                f"{key}_bare_sps": round(bare, 1),
                f"{key}_ratio": round(ratio, 3),
                f"{key}_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        )
    console.print(table)
    summary["goal_ratio"] = GOAL_RATIO
    summary["goal_met"] = all(summary[f"{k}_ratio"] >= GOAL_RATIO for k in ("idproxy", "id_only"))
    print(json.dumps(summary), flush=True)
    return 0
