"""The demo's end-of-run report: a printed table, PNG plots and one JSON summary.

Reads what the components left in the run folder:

* ``trainer-<variant>/summary.json`` and ``predictions.npz`` (prequential scores: each
  sample scored before it was trained on);
* ``materializer.json`` (seconds from upload to servable, per item);
* ``store/`` (versions, the active one and its item count);
* ``dlq.json`` (dead letters counted by the demo before the broker stopped).

Writes ``summary.json``, ``auc_over_time.png`` and ``freshness.png`` next to them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from idproxy.settings import Settings
from trainer.metrics import auc
from trainer.streaming_metrics import auc_per_slice, time_stratified_auc

VARIANTS = ("idproxy", "id-only")


def auc_over_time(pred: dict[str, np.ndarray], buckets: int) -> dict[str, list[float | None]]:
    """Prequential AUC per consecutive slice of the stream, for new and for warm items.

    ``pred`` holds score [N], label [N], is_new [N] in stream order. Returns
    {"new": [...], "warm": [...]} with one AUC (or None when a slice has one class) per slice.

    >>> p = {"score": np.array([.9, .1, .8, .2]), "label": np.array([1, 0, 1, 0]),
    ...      "is_new": np.array([True, True, False, False])}
    >>> auc_over_time(p, 1)
    {'new': [1.0], 'warm': [1.0]}
    """
    return {
        name: [
            None if math.isnan(auc) else round(auc, 4)
            for auc, _ in auc_per_slice(pred, buckets, select)
        ]
        for name, select in (("new", pred["is_new"]), ("warm", ~pred["is_new"]))
    }


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def live_predictions(path: Path, live_from: float) -> dict[str, np.ndarray]:
    """The prequential predictions of samples stamped at or after ``live_from`` (wall-clock
    s): the live part, without the history period the bootstrap trained on."""
    with np.load(path, allow_pickle=False) as data:
        live = data["ts"] >= live_from
        return {k: data[k][live] for k in ("score", "label", "is_new", "ts")}


def write_report(
    plan,
    *,
    live_from: float,
    broker_rung: int,
    seconds: float,
    dlq: int,
    malformed: int,
    faults: dict[str, int],
) -> dict:
    """Builds the summary of a finished demo run (``plan``: ``idproxy.demo_plan.Plan``); AUCs
    are over the live samples only (``live_from``: the wall-clock time go-live began)."""
    r = plan.run_dir
    trainers, curves, aucs = {}, {}, {}
    for v in VARIANTS:
        folder = r / f"trainer-{v}"
        trainers[v] = _read_json(folder / "summary.json")
        if (folder / "predictions.npz").is_file():
            pred = live_predictions(folder / "predictions.npz", live_from)
            curves[v] = auc_over_time(pred, buckets=10)
            new = pred["is_new"]
            aucs[v] = {
                "auc_all": _rounded(auc(pred["label"], pred["score"])),
                "auc_new": _rounded(auc(pred["label"][new], pred["score"][new])),
                "auc_new_by_decile": _rounded(time_stratified_auc(pred, buckets=10)),
                "live_samples": int(len(new)),
                "new_samples": int(new.sum()),
            }
    by_item = _read_json(r / "materializer.json").get("freshness_s", {})
    catalogue = set(plan.catalogue)
    fresh = [s for item, s in by_item.items() if item not in catalogue]  # uploaded live
    backfill = [s for item, s in by_item.items() if item in catalogue]
    versions, active, servable, switches = _store_versions(plan)
    summary = {
        "broker_rung": broker_rung,
        "seconds": round(seconds, 1),
        "ratings": plan.ratings,
        "items_uploaded": plan.items,
        "items_servable": servable,
        "malformed_sent": malformed,
        "dead_letters": dlq,
        "faults_injected": faults,
        "catalogue_items": len(catalogue),
        "catalogue_servable_s": percentile(backfill, 100),
        "live_items": len(fresh),
        "freshness_p50_s": percentile(fresh, 50),
        "freshness_p99_s": percentile(fresh, 99),
        "active_version": active,
        "versions_published": versions,
    }
    summary["history_ratings"] = plan.history
    summary["coarse_switches"] = around_switches(
        {v: live_predictions(r / f"trainer-{v}" / "predictions.npz", live_from) for v in aucs},
        [t for t in switches if t >= live_from],
    )
    for v, s in trainers.items():
        key = v.replace("-", "_")
        summary[f"samples_{key}"] = s.get("samples")
        for name, value in aucs.get(v, {}).items():
            summary[f"{name}_{key}"] = value
    for name in ("auc_all", "auc_new", "auc_new_by_decile"):
        a, b = summary.get(f"{name}_idproxy"), summary.get(f"{name}_id_only")
        summary[f"delta_{name[4:]}"] = None if a is None or b is None else round(a - b, 4)
    _print_table(summary)
    _plot(r, curves, fresh)
    (r / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _rounded(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _store_versions(plan) -> tuple[list[str], str | None, int, list[float]]:
    """(published versions, the active one, its item count, publish times of the coarse
    versions, i.e. the re-alignments) from the run's store."""
    from store import ProxyStore
    from trainer.realign_cli import REALIGN_PREFIX

    path = plan.run_dir / "store"
    if not path.exists():
        return [], None, 0, []
    with ProxyStore(str(path), dim=plan.id_dim, read_only=True) as store:
        infos = store.versions()
        active = store.active_version()
        published = [v.version for v in infos if v.published_at is not None]
        count = next((v.item_count for v in infos if v.version == active), 0)
        coarse = sorted(
            v.published_at
            for v in infos
            if v.published_at is not None and v.version.startswith(REALIGN_PREFIX)
        )
    return published, active, count, coarse


def around_switches(
    preds: dict[str, dict[str, np.ndarray]], times: list[float], window_s: float = 60.0
) -> list[dict]:
    """The paired AUC difference (idproxy − id-only, all samples) in the ``window_s``
    seconds before and after each coarse-version switch at ``times`` (wall-clock s).

    ``preds``: variant -> live predictions with ``ts``. Both trainers score the same
    samples, so each window compares the two on the same events.
    """
    if set(preds) != set(VARIANTS):
        return []
    out = []
    for t in times:
        row: dict = {"t": round(t, 1)}
        for name, lo, hi in (("before", t - window_s, t), ("after", t, t + window_s)):
            aucs = []
            for v in VARIANTS:
                p = preds[v]
                sel = (p["ts"] >= lo) & (p["ts"] < hi)
                aucs.append(auc(p["label"][sel], p["score"][sel]))
            row[f"delta_{name}"] = _rounded(aucs[0] - aucs[1])
        out.append(row)
    return out


def _print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="IDProxy demo summary (AUCs over the live samples)")
    table.add_column("measure")
    table.add_column("IDProxy", justify="right")
    table.add_column("ID only", justify="right")
    for label, key in (
        ("online AUC, new items", "auc_new"),
        ("... per stream decile, weighted", "auc_new_by_decile"),
        ("online AUC, all items", "auc_all"),
        ("samples trained (history + live)", "samples"),
        ("live samples scored", "live_samples"),
        ("live samples of new items", "new_samples"),
    ):
        table.add_row(label, str(s.get(f"{key}_idproxy")), str(s.get(f"{key}_id_only")))
    Console().print(table)
    print(
        f"items servable {s['items_servable']}/{s['items_uploaded']}, ratings {s['ratings']:,}, "
        f"dead letters {s['dead_letters']} (malformed sent {s['malformed_sent']}), "
        f"faults injected {s['faults_injected'] or 'none'}, launch catalogue {s['catalogue_items']} "
        f"items servable after {s['catalogue_servable_s']} s, freshness of the "
        f"{s['live_items']} items uploaded live p50 {s['freshness_p50_s']} s / p99 "
        f"{s['freshness_p99_s']} s, active version {s['active_version']}, "
        f"{len(s['versions_published'])} versions published, broker rung {s['broker_rung']}, "
        f"{s['seconds']} s"
    )


def _plot(run_dir: Path, curves: dict, fresh: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, curve in curves.items():
        for kind, style in (("new", "-"), ("warm", "--")):
            ys = [np.nan if y is None else y for y in curve[kind]]
            ax.plot(range(1, len(ys) + 1), ys, style, marker="o", label=f"{variant}, {kind} items")
    ax.set_xlabel("stream decile (time order)")
    ax.set_ylabel("prequential AUC")
    ax.set_title("Online AUC over time: IDProxy vs ID only, new vs warm items")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "auc_over_time.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(fresh, bins=30)
    ax.set_xlabel("seconds from upload to servable")
    ax.set_ylabel("items")
    ax.set_title(f"Freshness of the {len(fresh)} items uploaded during the replay")
    fig.tight_layout()
    fig.savefig(run_dir / "freshness.png", dpi=120)
    plt.close(fig)


def count_dead_letters(settings: Settings, broker, topic_prefix: str) -> int:
    """Distinct rejected inputs on the run's ``dlq`` topic (read from the beginning until
    idle). A component restarted by the fault drill may dead-letter the same input twice;
    it is counted once, by its source topic, partition and offset."""
    from kafka import KafkaConsumer

    from streams.events import DeadLetter, parse_json
    from streams.kafka_config import consumer_config

    consumer = KafkaConsumer(f"{topic_prefix}dlq", **consumer_config(settings, broker, None))
    sources, idle_since = set(), time.time()
    while time.time() - idle_since < 3:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                letter = parse_json(r.value, DeadLetter)
                sources.add((letter.source_topic, letter.partition, letter.offset))
            idle_since = time.time()
    consumer.close()
    return len(sources)
