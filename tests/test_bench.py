"""The benchmark command keeps working: a tiny smoke run of bench/run.py (never a timing check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = (
    "validate-small",
    "validate-large",
    "validate-set",
    "startup",
    "plan-noop",
    "apply-floor",
    "apply-vs-loop",
    "bookkeeping",
    "memory",
    "growth",
    "apply-db",
    "plan-noop-db",
    "memory-db",
    "verify",
)
NUMBER = re.compile(r"\d+\.\d+")


def table_rows(output: str) -> dict[str, list[str]]:
    """The printed Markdown table's rows by their first cell (the header row under "case")."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_run_reports_every_case(tmp_path: Path) -> None:
    pytest.importorskip("jdcloud_sdk")
    pytest.importorskip("check_jsonschema")
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None

    finished = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--peers-from-current-env",
            "--no-write",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = table_rows(finished.stdout)
    header = rows.pop("case")
    assert header == ["case", "what", "ours", "peer", "ratio", "target", "result"]
    assert sorted(rows) == sorted(ROWS)
    for case, cells in rows.items():
        assert NUMBER.search(cells[2]), f"{case}: no figure of ours in {cells}"
        assert cells[6] in ("pass", "MISS", "within noise"), f"{case}: {cells}"
    for case in ("validate-small", "startup", "apply-vs-loop", "apply-db", "plan-noop-db"):
        assert NUMBER.search(rows[case][3]), f"{case}: no peer figure in {rows[case]}"
    assert (results.read_bytes() if results.exists() else None) == before
