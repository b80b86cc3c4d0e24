"""`idproxy bench table1`: the paper's Table 1 on MovieLens-100K (Base, v1-v5, peers).

Prints a Markdown table (mean ± std over seeds), writes ``table1.json`` and
``table1.png`` into a fresh folder under ``settings.run_dir`` and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from idproxy.settings import Settings

COLUMNS = (
    ("auc_all", "AUC all"),
    ("gauc", "GAUC"),
    ("logloss", "LogLoss"),
    ("auc_new", "AUC new items"),
    ("auc_new_warm", "AUC new items after warm-up"),
    ("delta_new", "Δ AUC new vs Base"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny synthetic run for tests")
    parser.add_argument("--seeds", type=int, default=None, help="default: trainer.seeds")


def summarise(rows: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> column -> (mean, std over seeds); delta_new is paired per seed vs Base."""
    import numpy as np

    base = {r["seed"]: r["auc_new"] for r in rows if r["variant"] == "Base"}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [
            r | {"delta_new": r["auc_new"] - base[r["seed"]]} for r in rows if r["variant"] == name
        ]
        out[name] = {
            k: (float(np.mean([r[k] for r in mine])), float(np.std([r[k] for r in mine])))
            for k, _ in COLUMNS
        }
    return out


def markdown(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines = ["| variant | " + " | ".join(t for _, t in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, cols in summary.items():
        cells = [
            f"{cols[k][0]:+.4f} ± {cols[k][1]:.4f}"
            if k == "delta_new"
            else f"{cols[k][0]:.4f} ± {cols[k][1]:.4f}"
            for k, _ in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary)
    keys = ("auc_all", "auc_new", "auc_new_warm")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    for j, k in enumerate(keys):
        ax.bar(
            x + (j - 1) * 0.27,
            [summary[n][k][0] for n in names],
            0.27,
            yerr=[summary[n][k][1] for n in names],
            label=k,
            capsize=2,
        )
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("AUC")
    lo = min(summary[n][k][0] for n in names for k in keys)
    ax.set_ylim(max(0.0, lo - 0.05), None)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    out: Path, rows: list[dict], quick: bool, seeds: int, wall: float, settings: Settings
) -> dict[str, dict[str, tuple[float, float]]]:
    """Writes table1.json, table1.md and table1.png for the seeds finished so far."""
    summary = summarise(rows)
    payload = {
        "quick": quick,
        "seeds": seeds,
        "wall_s": wall,
        "rows": rows,
        "summary": summary,
        "trainer": settings.trainer.model_dump(),
        "stage1": settings.stage1.model_dump(),
    }
    (out / "table1.json").write_text(json.dumps(payload, indent=1))
    (out / "table1.md").write_text(markdown(summary) + "\n")
    bar_chart(summary, out / "table1.png")
    return summary


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from tqdm import tqdm

    from trainer.data import make_split
    from trainer.movielens import load_movielens
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
    started = time.perf_counter()
    ml = load_movielens()
    out = Path(settings.run_dir) / f"table1-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    bar = tqdm(total=seeds * len(VARIANTS), desc="table1 (seed × variant)", unit="model")
    for seed in range(seeds):
        split = make_split(
            ml,
            seed=seed,
            history_len=t.history_len,
            new_item_fraction=t.new_item_fraction,
            test_fraction=t.test_fraction,
            warmup_k=t.warmup_k,
            max_events=t.quick_events if args.quick else None,
        )
        bar.set_postfix(seed=seed, n_test_new=len(split.test_new))
        content_fn = content_function(settings, quick=args.quick, seed=seed)
        for r in run_seed(split, settings, seed, content_fn, on_result=lambda _: bar.update(1)):
            rows.append(r.model_dump())
        write_results(out, rows, args.quick, seed + 1, time.perf_counter() - started, settings)
    bar.close()
    wall = time.perf_counter() - started
    summary = write_results(out, rows, args.quick, seeds, wall, settings)
    print(markdown(summary))
    print(
        json.dumps(
            {
                "bench": "table1",
                "quick": args.quick,
                "seeds": seeds,
                "wall_s": round(wall, 1),
                "run_dir": str(out),
                "auc_new": {n: round(c["auc_new"][0], 4) for n, c in summary.items()},
            }
        )
    )
    return 0
