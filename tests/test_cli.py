"""The command line lists its subcommands."""

import subprocess
import sys


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "idproxy.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("demo", "align", "bench", "settings"):
        assert name in out
