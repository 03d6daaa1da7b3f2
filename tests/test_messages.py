"""Messages that say what happened: a journal that cannot be opened, a state path that is a
directory, a migration's source, duplicate keys in a state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.state import StateStore
from tests.test_cli import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose real-looking state `state.json` holds the 7 examples, submitted."""
    folder = tmp_path_factory.mktemp("applied")
    result = cli(folder, "apply", str(EXAMPLES), "--sandbox", "--state", "state.json", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


# --- sandbox --journal -------------------------------------------------------------------------


def test_sandbox_names_a_journal_it_cannot_open(tmp_path: Path) -> None:
    journal = tmp_path / "missing" / "dir" / "j.jsonl"
    result = cli(tmp_path, "sandbox", "--port", "0", "--journal", str(journal))
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "cannot listen" not in result.stderr
    assert f"cannot open the journal {journal}" in result.stderr, result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not journal.parent.exists()


# --- init --state DIR --------------------------------------------------------------------------


def test_init_on_a_directory_says_it_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "states").mkdir()
    result = cli(tmp_path, "init", "--state", "states")
    assert result.returncode == 1
    assert "already exists" not in result.stderr
    assert "states is a directory, not a state file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot_of(tmp_path) == {}, "nothing written (no lock file either)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states"]


# --- state migrate: what happened to the source ------------------------------------------------


def test_migrate_leaves_the_source_and_its_journal_as_they_were(
    applied: Path, tmp_path: Path
) -> None:
    source = tmp_path / "state.json"
    source.write_bytes((applied / "state.json").read_bytes())
    # A journal beside the source (an apply that was killed before it compacted): one line
    # re-recording a task, as apply writes it.
    store = StateStore(source)
    entry = next(iter(store.load().entries.values()))
    with store.lock():
        store.append([entry])
    assert store.journal_path.exists()
    sources = ("state.json", "state.json.journal")
    before = {name: (tmp_path / name).read_bytes() for name in sources}

    result = cli(tmp_path, "state", "migrate", "state.json", "copy.json")

    assert result.returncode == 0, result.stderr
    after = {name: (tmp_path / name).read_bytes() for name in sources}
    assert after == before, "the source (snapshot and journal) was left as it was"
    copied = json.loads((tmp_path / "copy.json").read_bytes())
    assert copied["tasks"].keys() == store.load().entries.keys()
    assert not (tmp_path / "copy.json.journal").exists()
    assert "state.json was left as it was" in result.stdout
    assert "7 sandbox tasks" in result.stdout


# --- duplicate keys in a state file ------------------------------------------------------------


def test_a_duplicate_task_in_the_state_file_is_refused_with_its_place(
    applied: Path, tmp_path: Path
) -> None:
    text = (applied / "state.json").read_text(encoding="utf-8")
    document = json.loads(text)
    first, second = sorted(document["tasks"])[:2]
    # The second task's entry written under the first task's hash: a merge gone wrong.
    duplicated = text.replace(f'"{second}":', f'"{first}":', 1)
    assert duplicated != text
    state = tmp_path / "state.json"
    state.write_text(duplicated, encoding="utf-8")
    key = f'"{first}":'
    at = duplicated.index(key, duplicated.index(key) + 1)  # the second one
    line = duplicated.count("\n", 0, at) + 1
    column = at - duplicated.rfind("\n", 0, at)
    before = snapshot_of(tmp_path)

    for command in (("state", "list"), ("plan", str(EXAMPLES))):
        result = cli(tmp_path, *command, "--state", "state.json")
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert f"state.json:{line}:{column}: duplicate key {json.dumps(first)}" in result.stderr, (
            result.stderr
        )
        assert "Traceback" not in result.stderr
        assert snapshot_of(tmp_path) == before, "nothing written"


def test_a_duplicate_field_of_an_entry_is_refused_with_its_place(
    applied: Path, tmp_path: Path
) -> None:
    text = (applied / "state.json").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    at = next(i for i, content in enumerate(lines) if content.strip().startswith('"status":'))
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at + 1, f'{indent}"status": "pending",\n')
    state = tmp_path / "state.json"
    state.write_text("".join(lines), encoding="utf-8")
    before = snapshot_of(tmp_path)

    result = cli(tmp_path, "state", "list", "--state", "state.json")

    assert result.returncode == 1
    assert f'state.json:{at + 2}:{len(indent) + 1}: duplicate key "status"' in result.stderr, (
        result.stderr
    )
    assert snapshot_of(tmp_path) == before


def test_a_duplicate_field_in_a_journal_line_is_refused_with_its_place(
    applied: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes((applied / "state.json").read_bytes())
    store = StateStore(state)
    entry = next(iter(store.load().entries.values()))
    with store.lock():
        store.append([entry])
    line = store.journal_path.read_text(encoding="utf-8")
    assert line.startswith('{"hash":')
    store.journal_path.write_text(line.replace('{"hash":', '{"name":"x","name":"y","hash":', 1))
    before = snapshot_of(tmp_path)

    result = cli(tmp_path, "state", "list", "--state", "state.json")

    assert result.returncode == 1
    assert 'state.json.journal:1:13: duplicate key "name"' in result.stderr, result.stderr
    assert snapshot_of(tmp_path) == before
