"""Every runtime module stays under 400 lines (split a module by job before it grows past)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("idproxy", "streams", "store", "trainer", "proxy_model")
MAX_LINES = 400


def test_no_runtime_module_exceeds_the_limit():
    counts = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert len(counts) > 50  # the packages were found
    too_long = {m: n for m, n in counts.items() if n > MAX_LINES}
    assert not too_long, f"split these modules (over {MAX_LINES} lines): {too_long}"
