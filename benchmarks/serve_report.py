"""The table, the plot and the summary line of `idproxy bench serve`."""

from __future__ import annotations

from pathlib import Path

GOALS = {
    "get_c64_rps_vs_baseline": (">=", 3.0),
    "get_c64_p99_ms": ("<=", 20.0),
    "batch1000_binary_p50_ms": ("<=", 5.0),
    "batch1000_binary_speedup_vs_json": (">=", 10.0),
}


def _get(results: dict, server: str, name: str, key: str) -> float | None:
    value = results.get(server, {}).get(name, {}).get(key)
    return float(value) if value is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(results: dict, config: dict, out_dir: Path, seconds: float) -> dict:
    """The one-line summary: the goal figures (FastAPI), totals and whether goals are met."""
    # "today's JSON": the JSON answer of the API this one replaced (the legacy baseline)
    json_p50 = _get(results, "legacy", "batch1000 json c1", "p50_ms")
    fastapi_json_p50 = _get(results, "fastapi", "batch1000 json c1", "p50_ms")
    bin_p50 = _get(results, "fastapi", "batch1000 binary c1", "p50_ms")
    rps = _get(results, "fastapi", "get c64", "rps")
    base_rps = _get(results, "legacy", "get c64", "rps")
    p99 = _get(results, "fastapi", "get c64", "p99_ms")
    figures = {
        "batch1000_binary_p50_ms": round(bin_p50, 3) if bin_p50 is not None else None,
        "batch1000_binary_speedup_vs_json": _ratio(json_p50, bin_p50),
        "batch1000_binary_speedup_vs_fastapi_json": _ratio(fastapi_json_p50, bin_p50),
        "get_c64_rps": round(rps, 1) if rps is not None else None,
        "get_c64_baseline_rps": round(base_rps, 1) if base_rps is not None else None,
        "get_c64_rps_vs_baseline": _ratio(rps, base_rps),
        "get_c64_p99_ms": round(p99, 3) if p99 is not None else None,
    }
    goals = {}
    for key, (op, bound) in GOALS.items():
        value = figures[key]
        goals[key] = None if value is None else (value >= bound if op == ">=" else value <= bound)
    every = [r for by_name in results.values() for r in by_name.values()]
    return {
        "bench": "serve",
        **figures,
        "errors": sum(r["errors"] for r in every),
        "torn_reads": sum(r["torn_reads"] for r in every),
        "goals_met": goals,
        **{k: config[k] for k in ("items", "dim", "duration_s", "uvicorn_workers", "quick")},
        "seconds": round(seconds, 1),
        "out_dir": str(out_dir),
    }


def print_table(results: dict, config: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"read API under load: {config['items']:,} items, d={config['dim']}, "
        f"{config['duration_s']:g} s per scenario, {config['cpus']} CPUs"
    )
    for col in ("scenario", "server", "req/s", "p50 ms", "p99 ms", "errors", "torn", "CPU c/s"):
        table.add_column(col, justify="left" if col in ("scenario", "server") else "right")
    names = list(dict.fromkeys(n for by_name in results.values() for n in by_name))
    for name in names:
        for server, by_name in results.items():
            r = by_name.get(name)
            if r is None:
                continue
            table.add_row(
                name,
                server,
                f"{r['rps']:,.0f}",
                f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else "-",
                f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else "-",
                str(r["errors"]),
                str(r["torn_reads"]),
                f"{r['client_cpu']:.2f}/{r['server_cpu']:.2f}",
            )
    Console(width=120).print(table)
    print("CPU c/s: cores used by the load generator / by the server (all its processes)")


def plot(results: dict, path: Path, config: dict) -> None:
    """req/s and p99 vs concurrency, one line per server and request kind (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"fastapi": "-", "legacy": "--"}
    colors = dict(
        zip(
            ["get", "batch100 json", "batch100 binary", "batch1000 json", "batch1000 binary"],
            ["C0", "C1", "C2", "C3", "C4"],
            strict=True,
        )
    )
    for server, by_name in results.items():
        families: dict[str, list[tuple[int, float, float]]] = {}
        for name, r in by_name.items():
            family, _, conc = name.rpartition(" c")
            if r["p99_ms"] is not None:
                families.setdefault(family, []).append((int(conc), r["rps"], r["p99_ms"]))
        for family, points in families.items():
            points.sort()
            xs = [p[0] for p in points]
            label = f"{family} ({server})"
            kw = {"ls": styles.get(server, ":"), "color": colors.get(family), "marker": "o"}
            ax_rps.plot(xs, [p[1] for p in points], label=label, **kw)
            ax_p99.plot(xs, [p[2] for p in points], label=label, **kw)
    for ax, ylabel in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 16, 64], ["1", "16", "64"])
        ax.set_xlabel("concurrency (closed-loop users)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_p99.axhline(20, color="grey", lw=0.8, ls=":")
    ax_rps.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"idproxy bench serve: FastAPI/uvicorn ({config['uvicorn_workers']} workers, "
        f"{config['http']}) solid, legacy stdlib dashed; {config['items']:,} items, "
        f"{config['cpus']}-CPU machine"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
