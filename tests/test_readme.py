"""README promises that tests can check: its set-up commands and the output it quotes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_exactly_two_tagged_setup_commands() -> None:
    tags = re.findall(r"<!-- setup:(\w+) -->\n```sh\n(.+)\n```", README)
    assert [tag for tag, _ in tags] == ["demo", "test"]
    demo, test = (command for _, command in tags)
    assert "python3 -m venv" in demo and "pip install ." in demo
    assert "python3 -m venv" in test and "'.[test]'" in test and "pytest" in test


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_command demo" in ci and "readme_command test" in ci
    assert "|| true" not in ci, "CI must not hide a failing step"


def test_invalid_examples_output_is_what_readme_shows() -> None:
    block = re.search(
        r"<!-- invalid-examples:begin -->\n```text\n(.*?)```\n<!-- invalid-examples:end -->",
        README,
        re.S,
    )
    assert block is not None
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", "examples/invalid"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == block.group(1)
