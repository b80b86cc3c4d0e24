"""`idproxy bench trainer`: samples/s of the online trainer loop vs a bare PyTorch loop.

Both sides train the same model (same seed, same settings) on the same mini-batches held
in memory:

* **trainer loop** — ``trainer.online.TrainerCore.feed`` as the trainer runs it: the sample
  decoder (JSON parsing and validation of each TrainingSample, de-duplication, id -> row;
  inline by default, or in its helper process decoding batch k+1 while batch k trains), ID-table
  growth, content gathering from the item cache, the forward/backward/Adam step, windowed
  AUC/LogLoss and the prediction stream;
* **bare loop** — the batches pre-built as tensors, then only forward, BCE, backward and
  ``optimizer.step()``.

``--decoder inline|process`` picks the sample decoder (default: the setting
``IDPROXY_TRAINER_SAMPLE_DECODER``). The helper process uses a second core: on a machine
with one core, or with ``IDPROXY_TRAINER_THREADS`` torch threads busy on every core, the
inline decoder is the fair figure.

Kafka polling and checkpoints are not in either number (checkpoints are every N batches
and are measured by the trainer's own logs). Sizes default to MovieLens-100K (943 users,
1,682 items, 100,000 samples: users' histories fill up to ``history_len`` as in the real
stream) with the SmolLM2 feature sizes (D = 576, G = 3, d = settings.model.id_dim);
features and clicks are random.
The goal is a ratio trainer / bare ≥ 0.8: the median over repeats of the ratio of
two back-to-back runs. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import namedtuple

from idproxy.settings import Settings

Record = namedtuple("Record", "value partition offset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", type=int, default=100_000, help="stream length (MovieLens-100K: 100,000)"
    )
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--hidden", type=int, default=576, help="D of the cached features")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    parser.add_argument(
        "--decoder",
        choices=("process", "inline"),
        default=None,
        help="sample decoder of the trainer loop (default: the trainer setting)",
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
    """-> (ItemCache with random content, TrainingSample records) for the bench sizes."""
    import numpy as np

    from streams.events import TrainingSample, to_json

    rng = np.random.default_rng(0)
    d, groups = settings.model.id_dim, settings.model.n_layer_groups
    z_groups = rng.standard_normal((args.items, groups, args.hidden)).astype(np.float32)
    p_coarse = rng.standard_normal((args.items, d)).astype(np.float32)
    p_coarse /= np.linalg.norm(p_coarse, axis=1, keepdims=True)
    ids = [str(i) for i in range(args.items)]
    cache = filled_cache(ids, z_groups.mean(1), z_groups, p_coarse)
    pick = random.Random(0)
    history: dict[str, list[str]] = {}
    counts = [0] * args.items
    records = []
    for k in range(args.samples):
        u, i = pick.randrange(args.users), pick.randrange(args.items)
        label = int(pick.random() < (0.7 if (u + i) % 3 == 0 else 0.2))
        hist = history.setdefault(f"u{u}", [])
        sample = TrainingSample(
            sample_id=f"s/0/{k}",
            user_id=f"u{u}",
            item_id=str(i),
            label=label,
            ts=float(k),
            history=hist[-settings.trainer.history_len :],
            item_interactions=counts[i],
            item_age_s=float(k),
            item_known=True,
        )
        counts[i] += 1
        if label:
            hist.append(str(i))
        records.append(Record(to_json(sample), 0, k))
    return cache, records


def model_and_optimizer(settings, variant: str, hidden: int):
    """A fresh OnlineRanker of ``variant`` with the trainer's settings, and its Adam."""
    from trainer.online import attach_optimizer
    from trainer.online_model import OnlineRanker, OnlineShape

    t, m = settings.trainer, settings.model
    shape = OnlineShape(
        dim=m.id_dim,
        hidden_size=hidden,
        n_groups=m.n_layer_groups,
        adaptor_hidden=m.adaptor_hidden,
        cross_layers=t.cross_layers,
        attention_hidden=t.attention_hidden,
        mlp_hidden=tuple(t.mlp_hidden),
        initial_rows=t.initial_rows,
    )
    model = OnlineRanker(shape, variant, seed=t.online_seed)
    return model, attach_optimizer(model, t.online_lr, t.online_adaptor_lr_scale)


def trainer_loop(settings, variant, hidden, cache, chunks):
    """-> (samples/s, trained model) of ``TrainerCore.feed`` over the record chunks.

    The clock starts once the core (and its decoder: a helper process takes ~0.3 s to
    start, once per trainer run) is up and stops when the last batch has trained.
    """
    from trainer.online import TrainerCore

    model, optimizer = model_and_optimizer(settings, variant, hidden)
    core = TrainerCore(settings, model, optimizer, cache)
    try:
        started = time.perf_counter()
        for chunk in chunks:
            core.feed(chunk)
        core.flush()
        return core.samples / (time.perf_counter() - started), model
    finally:
        core.close()


def bare_loop(settings, variant, hidden, cache, chunks):
    """-> (samples/s, trained model) of forward/BCE/backward/step on pre-built batches."""
    import torch
    import torch.nn.functional as F

    from trainer.online import BatchBuilder, decoder_state
    from trainer.sample_decoder import SampleDecoder

    model, optimizer = model_and_optimizer(settings, variant, hidden)
    builder = BatchBuilder(model, cache)
    decoder = SampleDecoder(decoder_state(settings, model))
    batches = [builder.build(decoder.decode([r.value for r in chunk])) for chunk in chunks]
    n = sum(len(b.labels) for b in batches)
    started = time.perf_counter()
    for batch in batches:
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.sigmoid(loss.detach())
    return n / (time.perf_counter() - started), model


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    if args.tiny:
        args.samples, args.users, args.items, args.hidden = 2000, 100, 200, 32
    if args.decoder:
        t = settings.trainer.model_copy(update={"sample_decoder": args.decoder})
        settings = settings.model_copy(update={"trainer": t})
    decoder = settings.trainer.sample_decoder
    torch.set_num_threads(settings.trainer.threads)
    console = Console()
    cache, records = world(args, settings)
    size = settings.trainer.online_batch_size
    chunks = [records[k : k + size] for k in range(0, len(records), size)]
    for variant in ("idproxy", "id-only"):  # warm-up: first-call costs out of the timings
        trainer_loop(settings, variant, args.hidden, cache, chunks[:3])
        bare_loop(settings, variant, args.hidden, cache, chunks[:3])
    rates: dict[tuple[str, str], list[float]] = {}
    jobs = [
        (v, side)
        for _ in range(args.repeats)
        for v in ("idproxy", "id-only")
        for side in ("trainer", "bare")
    ]
    for variant, side in tqdm(jobs, desc="bench trainer", unit="run"):
        loop = trainer_loop if side == "trainer" else bare_loop
        rate, _ = loop(settings, variant, args.hidden, cache, chunks)
        rates.setdefault((variant, side), []).append(rate)

    table = Table(
        title=f"online trainer, {args.samples} samples, batch {size}, {decoder} decoder,"
        f" {settings.trainer.threads} torch threads, median of {args.repeats}"
    )
    for col in ("variant", "trainer loop samples/s", "bare loop samples/s", "ratio", "range"):
        table.add_column(col)
    summary: dict = {
        "bench": "trainer",
        "samples": args.samples,
        "batch": size,
        "hidden": args.hidden,
        "decoder": decoder,
        "threads": settings.trainer.threads,
    }
    for variant in ("idproxy", "id-only"):
        tr, bare = rates[(variant, "trainer")], rates[(variant, "bare")]
        # each repeat runs the two loops back to back: the ratio of a pair is robust to
        # slow drifts of the machine's speed, so the figure is the median pair ratio
        ratios = [t / b for t, b in zip(tr, bare, strict=True)]
        ratio = statistics.median(ratios)
        table.add_row(
            variant,
            f"{statistics.median(tr):,.0f}",
            f"{statistics.median(bare):,.0f}",
            f"{ratio:.3f}",
            f"{min(ratios):.3f}–{max(ratios):.3f}",
        )
        key = variant.replace("-", "_")
        summary.update(
            {
                f"{key}_trainer_sps": round(statistics.median(tr), 1),
                f"{key}_bare_sps": round(statistics.median(bare), 1),
                f"{key}_ratio": round(ratio, 3),
                f"{key}_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        )
    console.print(table)
    summary["goal_ratio"] = 0.8
    summary["goal_met"] = all(summary[f"{k}_ratio"] >= 0.8 for k in ("idproxy", "id_only"))
    print(json.dumps(summary), flush=True)
    return 0
