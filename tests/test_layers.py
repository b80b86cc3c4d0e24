"""The layers of pyproject.toml's ``[tool.importlinter]`` hold: `lint-imports` passes.

It checks every import, including those inside functions and under TYPE_CHECKING: no
module imports from a layer above its own, and no package has an import cycle.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lint_imports_keeps_every_contract():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "import-linter is a dev dependency: run `make setup`"
    # run from the checkout's root: lint-imports puts the current directory first on sys.path
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
