"""`idproxy demo`: the main job. Until the live pipeline lands it runs the offline
Stage-1 alignment on MovieLens-100K with real weights (`idproxy align`)."""

from __future__ import annotations

import argparse

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small, fast run")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from trainer import stage1_job

    return stage1_job.run(args, settings)
