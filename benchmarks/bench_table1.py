"""`idproxy bench table1`: the paper's Table 1 on MovieLens-100K (Base, v1-v5, peers, and
the distillation control), under each cold-start protocol of ``trainer.table1_protocols``.

Prints one Markdown table per protocol (mean ± std over seeds; Δ columns paired per seed
vs Base, with the count of seeds where Δ > 0), writes ``table1.json``, ``table1.md`` and
``table1.png`` (paired Δ per variant with std error bars) into a fresh folder under
``settings.run_dir`` after every seed, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from idproxy.settings import Settings

METRICS = ("auc_all", "gauc", "logloss", "auc_warm", "auc_new", "auc_new_warm")
DELTAS = ("auc_all", "auc_warm", "auc_new", "auc_new_warm")  # paired vs Base
COLUMNS = (
    ("auc_all", "AUC all"),
    ("auc_warm", "AUC warm"),
    ("auc_new", "AUC new"),
    ("auc_new_warm", "AUC new after warm-up (prequential)"),
    ("gauc", "GAUC"),
    ("logloss", "LogLoss"),
    ("delta_warm", "Δ warm vs Base"),
    ("delta_new", "Δ new vs Base"),
    ("delta_new_warm", "Δ new after warm-up"),
)
PROTOCOL_TITLES = {
    "random": "random item hold-out",
    "time": "time-based (latest-appearing items are cold)",
}

Summary = dict[str, dict[str, dict[str, float]]]  # variant -> column -> {mean, std, wins}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny synthetic run for tests")
    parser.add_argument("--seeds", type=int, default=None, help="default: trainer.seeds")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated variant names to run (Base always runs first); default: all",
    )


def delta_key(metric: str) -> str:
    return "delta_" + metric.removeprefix("auc_")


def summarise(rows: list[dict]) -> Summary:
    """variant -> column -> {mean, std over seeds, wins}; Δs are paired per seed vs Base.

    ``wins`` (Δ columns only) counts the seeds with Δ > 0. ``rows`` hold one protocol.
    """
    import numpy as np

    base = {r["seed"]: r for r in rows if r["variant"] == "Base"}
    out: Summary = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name and r["seed"] in base]
        cols: dict[str, dict[str, float]] = {}
        for k in METRICS:
            v = np.array([r[k] for r in mine], dtype=float)
            cols[k] = {"mean": float(np.mean(v)), "std": float(np.std(v))}
        for k in DELTAS:
            v = np.array([r[k] - base[r["seed"]][k] for r in mine], dtype=float)
            cols[delta_key(k)] = {
                "mean": float(np.mean(v)),
                "std": float(np.std(v)),
                "wins": int((v > 0).sum()),
            }
        out[name] = cols
    return out


def markdown(summary: Summary, seeds: int) -> str:
    lines = ["| variant | " + " | ".join(t for _, t in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, cols in summary.items():
        cells = []
        for k, _ in COLUMNS:
            c = cols[k]
            if k.startswith("delta_"):
                wins = f" ({c['wins']}/{seeds})" if name != "Base" else ""
                cells.append(f"{c['mean']:+.4f} ± {c['std']:.4f}{wins}")
            else:
                cells.append(f"{c['mean']:.4f} ± {c['std']:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_chart(summaries: dict[str, Summary], path: Path) -> None:
    """One panel per protocol: paired Δ AUC vs Base per variant, bars ± seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = ("delta_warm", "delta_new", "delta_new_warm")
    labels = ("Δ warm", "Δ new", "Δ new after warm-up")
    fig, axes = plt.subplots(len(summaries), 1, figsize=(11, 3.6 * len(summaries)), squeeze=False)
    for ax, (protocol, summary) in zip(axes[:, 0], summaries.items(), strict=True):
        names = [n for n in summary if n != "Base"]
        x = np.arange(len(names))
        for j, (k, label) in enumerate(zip(keys, labels, strict=True)):
            ax.bar(
                x + (j - 1) * 0.27,
                [summary[n][k]["mean"] for n in names],
                0.27,
                yerr=[summary[n][k]["std"] for n in names],
                label=label,
                capsize=2,
            )
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(x, names, rotation=15, ha="right")
        ax.set_ylabel("AUC − Base AUC (paired)")
        ax.set_title(f"Table 1, {PROTOCOL_TITLES.get(protocol, protocol)} (mean ± seed std)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    out: Path, rows: list[dict], quick: bool, seeds: int, wall: float, settings: Settings
) -> dict[str, Summary]:
    """Writes table1.json, table1.md and table1.png for the seeds finished so far."""
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    summaries = {p: summarise([r for r in rows if r["protocol"] == p]) for p in protocols}
    done = {p: len({r["seed"] for r in rows if r["protocol"] == p}) for p in protocols}
    payload = {
        "quick": quick,
        "seeds": seeds,
        "wall_s": wall,
        "rows": rows,
        "summary": summaries,
        "trainer": settings.trainer.model_dump(),
        "stage1": settings.stage1.model_dump(),
    }
    (out / "table1.json").write_text(json.dumps(payload, indent=1))
    md = [
        f"### {PROTOCOL_TITLES.get(p, p)} ({done[p]} seeds)\n\n{markdown(s, done[p])}\n"
        for p, s in summaries.items()
    ]
    (out / "table1.md").write_text("\n".join(md))
    delta_chart(summaries, out / "table1.png")
    return summaries


def final_line(summaries: dict[str, Summary], **head) -> dict:
    """The one-line JSON: random-protocol AUCs and Δs, ``*_time`` for the time protocol."""

    def pick(summary: Summary, col: str, field: str = "mean") -> dict:
        # NaN (a slice with one class, e.g. in --quick) is written as null: strict JSON
        return {
            n: None if math.isnan(c[col][field]) else round(c[col][field], 4)
            for n, c in summary.items()
        }

    line = dict(head)
    for protocol, summary in summaries.items():
        sfx = "" if protocol == "random" else f"_{protocol}"
        for col in ("auc_all", "auc_warm", "auc_new", "auc_new_warm"):
            line[col + sfx] = pick(summary, col)
        for col in ("delta_all", "delta_warm", "delta_new", "delta_new_warm"):
            line[col + sfx] = pick(summary, col)
            line[f"{col}{sfx}_std"] = pick(summary, col, "std")
            line[f"{col}{sfx}_wins"] = {n: c[col]["wins"] for n, c in summary.items()}
    return line


def select_variants(variants: tuple, names: str | None) -> tuple:
    """Base plus the variants named in ``names`` (comma-separated), in registry order.

    >>> from trainer.variants import VARIANTS
    >>> [v.name for v in select_variants(VARIANTS, "DropoutNet")]
    ['Base', 'DropoutNet']
    """
    if not names:
        return variants
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - {v.name for v in variants}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {[v.name for v in variants]}")
    return tuple(v for v in variants if v.name == "Base" or v.name in wanted)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from tqdm import tqdm

    from idproxy.movielens import load_movielens
    from trainer.data import make_split
    from trainer.table1 import content_function, run_seed
    from trainer.variants import VARIANTS

    t = settings.trainer
    torch.set_num_threads(t.threads)
    if args.quick:
        settings = settings.model_copy(
            update={"trainer": t.model_copy(update={"epochs": 1, "batch_size": 512})}
        )
        t = settings.trainer
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else t.seeds)
    variants = select_variants(VARIANTS, getattr(args, "variants", None))
    protocols = t.table1_protocols
    started = time.perf_counter()
    ml = load_movielens()
    out = Path(settings.run_dir) / f"table1-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(
        total=seeds * len(protocols) * len(variants),
        desc="table1 (seed × protocol × variant)",
        unit="model",
    )
    for seed in range(seeds):
        for protocol in protocols:
            split = make_split(
                ml,
                seed=seed,
                history_len=t.history_len,
                new_item_fraction=t.new_item_fraction,
                test_fraction=t.test_fraction,
                warmup_k=t.warmup_k,
                max_events=t.quick_events if args.quick else None,
                protocol=protocol,
            )
            bar.set_postfix(seed=seed, protocol=protocol, n_test_new=len(split.test_new))
            content_fn = content_function(settings, quick=args.quick, seed=seed)
            runs = run_seed(
                split, settings, seed, content_fn, variants, on_result=lambda _: bar.update(1)
            )
            for r in runs:
                rows.append(r.model_dump())
        write_results(out, rows, args.quick, seed + 1, time.perf_counter() - started, settings)
    bar.close()
    wall = time.perf_counter() - started
    summaries = write_results(out, rows, args.quick, seeds, wall, settings)
    for protocol, summary in summaries.items():
        print(f"\n### {PROTOCOL_TITLES.get(protocol, protocol)} ({seeds} seeds)\n")
        print(markdown(summary, seeds))
    print(
        json.dumps(
            final_line(
                summaries,
                bench="table1",
                quick=args.quick,
                seeds=seeds,
                protocols=list(protocols),
                wall_s=round(wall, 1),
                run_dir=str(out),
            )
        )
    )
    return 0
