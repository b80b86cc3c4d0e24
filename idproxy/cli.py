"""The `idproxy` command line.

Each subcommand lives in its own module. Command modules keep their top-level imports
light (torch, kafka and friends are imported inside ``run``), so ``idproxy --help`` stays
fast. A command module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace, settings: Settings) -> int: ...
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from idproxy.settings import load_settings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("idproxy.demo", "run the main job end to end on embedded defaults"),
    "align": ("trainer.stage1_job", "Stage-1 alignment on MovieLens-100K with real weights"),
    "bench": ("benchmarks.cli", "run a benchmark (see `idproxy bench --help`)"),
    "store": ("store.cli", "inspect and operate the versioned proxy store; serve its read API"),
    "broker": ("idproxy.broker_cli", "start a Kafka broker by the ladder and print its address"),
    "publish": ("streams.publish", "publish items/clicks from a file, or replay MovieLens-100K"),
    "worker": ("streams.worker", "run a proxy worker (items -> features + proxies)"),
    "materialize": ("streams.materializer", "materialise the proxies topic into the store"),
    "processor": ("streams.processor", "run the faust stream processor (clicks -> samples)"),
    "trainer": (
        "trainer.online_cli",
        "run the online Stage-2 trainer (samples -> ranker + adaptor)",
    ),
    "realign": ("trainer.realign_cli", "re-align the coarse head to the ID-only ranker's table"),
    "bootstrap": (
        "trainer.bootstrap_cli",
        "deploy on the history period: ID-only ranker, Stage 1, Stage-2 pretraining",
    ),
    "settings": ("idproxy.show_settings", "print the effective settings as JSON"),
    "schemas": ("streams.schemas", "write the events' JSON Schemas to schemas/ (--check: compare)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idproxy",
        description="IDProxy: MLLM proxy embeddings for cold-start items, served live.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # client libraries are chatty at INFO
        for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    module = importlib.import_module(args._module)
    return int(module.run(args, load_settings()) or 0)


if __name__ == "__main__":
    sys.exit(main())
