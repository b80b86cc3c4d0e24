"""`idproxy settings`: print the effective settings (defaults < file < env) as JSON."""

from __future__ import annotations

import argparse

from idproxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace, settings: Settings) -> int:
    del args
    print(settings.model_dump_json(indent=2))
    return 0
