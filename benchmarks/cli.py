"""`idproxy bench NAME`: dispatch to one benchmark module.

A benchmark module provides ``add_arguments(parser)`` and ``run(args, settings) -> int``,
keeps its top-level imports light, prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import importlib

from idproxy.settings import Settings

BENCHMARKS: dict[str, tuple[str, str]] = {
    "encoder": ("benchmarks.bench_encoder", "items/s of the default encoder; proxy-path overhead"),
    "store": ("benchmarks.bench_store", "proxy store latency/throughput, in process and over HTTP"),
    "table1": ("benchmarks.bench_table1", "paper Table 1 on MovieLens-100K: Base, v1-v5, peers"),
    "pipeline": ("benchmarks.bench_pipeline", "publish rate, worker vs bare model, freshness"),
    "load": ("benchmarks.bench_load", "stepped upload ramp: freshness p50/p99, sustainable rate"),
    "trainer": ("benchmarks.bench_trainer", "online trainer loop samples/s vs a bare PyTorch loop"),
    "online": ("benchmarks.bench_online", "online IDProxy vs ID-only ranker, per seed and warm-up"),
    "serve": (
        "benchmarks.bench_serve",
        "read API under load (locust): FastAPI/uvicorn vs the legacy stdlib server",
    ),
    "content-probe": (
        "benchmarks.bench_content_probe",
        "ceiling check: AUC on new items of a ridge from content vs side features to item CTR",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_bench_module=module)
        importlib.import_module(module).add_arguments(sp)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return int(importlib.import_module(args._bench_module).run(args, settings) or 0)
