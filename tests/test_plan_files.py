"""Saved plans through the real CLI: `apply PLAN.json` sends only what the plan's manifests ask
for (DESIGN §3 "Saved plans" and "Nothing is sent that no manifest asks for")."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.sandbox import Sandbox
from tests.test_e2e import MANIFEST, cli, env_for, init_state

pytestmark = pytest.mark.e2e


@dataclass
class Project:
    """A folder `plan` ran in: manifests under clips/, a state, and the saved plan.json."""

    root: Path
    box: Sandbox
    env: dict[str, str]

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    def plan(self) -> dict[str, Any]:
        return json.loads(self.plan_file.read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def write_plan(self, document: dict[str, Any], target: Path | None = None) -> Path:
        target = target or self.plan_file
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        return target

    def state_bytes(self) -> bytes:
        return (self.root / "reconciler-state.json").read_bytes()


def make_project(root: Path, box: Sandbox, streams: range) -> Project:
    """`plan clips --out plan.json` run in `root`, over one manifest per stream number."""
    (root / "clips").mkdir(parents=True)
    for n in streams:
        (root / "clips" / f"clip-{n}.yaml").write_text(MANIFEST.format(n=n), encoding="utf-8")
    env = env_for(box)
    init_state(root)
    made = cli("plan", "clips", "--out", "plan.json", cwd=root, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    return Project(root, box, env)


@pytest.fixture
def projects(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> tuple[Project, Project]:
    """Ours (clips 0-2) and another team's (clips 10-11), against one sandbox."""
    box = sandbox_factory()
    return (
        make_project(tmp_path / "ours", box, range(3)),
        make_project(tmp_path / "theirs", box, range(10, 12)),
    )


def assert_refused(project: Project, plan_file: Path, *expected: str) -> str:
    """`apply plan_file` in `project` exits 1 naming `expected`, sends and writes nothing."""
    before = project.state_bytes()
    applied = cli("apply", str(plan_file), cwd=project.root, env=project.env)
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "Traceback" not in applied.stderr
    for text in expected:
        assert text in applied.stderr, applied.stderr
    assert project.box.received() == [], "a refused plan sent requests"
    assert project.state_bytes() == before, "a refused plan wrote the state"
    return applied.stderr


def test_the_plan_records_where_it_was_made_and_from_what(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    document = ours.plan()
    assert document["paths"] == ["clips"]
    assert document["directory"] == str(ours.root)


def test_an_item_appended_from_another_plan_is_refused(projects: tuple[Project, ...]) -> None:
    ours, theirs = projects
    document = ours.plan()
    foreign = theirs.plan()["items"][0]
    document["items"].append(foreign)
    document["summary"]["create"] += 1
    ours.write_plan(document)
    assert_refused(
        ours, ours.plan_file, f"'{foreign['name']}' ({foreign['hash'][:12]})", "no manifest's"
    )


@pytest.mark.parametrize("edit", ["name", "source", "both"])
def test_an_item_of_another_plan_passed_off_as_ours_is_refused(
    projects: tuple[Project, ...], edit: str
) -> None:
    ours, theirs = projects
    document = ours.plan()
    foreign = theirs.plan()["items"][0]
    if edit in ("name", "both"):
        foreign["name"] = document["items"][0]["name"]
    if edit in ("source", "both"):
        foreign["source"] = document["items"][0]["source"]
    document["items"].append(foreign)
    ours.write_plan(document)
    assert_refused(ours, ours.plan_file, foreign["hash"][:12], "no manifest's")


def test_a_plan_whose_manifest_was_edited_since_is_refused(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    manifest = ours.root / "clips" / "clip-1.yaml"
    manifest.write_text(
        manifest.read_text().replace("saveBucket: highlights", "saveBucket: elsewhere")
    )
    assert_refused(ours, ours.plan_file, "'clip-1'", "manifests changed since")


def test_a_manifest_renamed_since_is_refused(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    manifest = ours.root / "clips" / "clip-1.yaml"
    manifest.write_text(manifest.read_text().replace("name: clip-1", "name: clip-one"))
    assert_refused(ours, ours.plan_file, "its name is 'clip-1' in the plan, but 'clip-one'")


def test_a_plan_whose_manifests_are_missing_names_them(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    shutil.rmtree(ours.root / "clips")
    assert_refused(
        ours, ours.plan_file, "manifests this plan was made from are missing: clips", str(ours.root)
    )


def test_a_deleted_manifest_file_is_refused(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    (ours.root / "clips" / "clip-2.yaml").unlink()
    assert_refused(ours, ours.plan_file, "'clip-2'", "no manifest's")


def test_an_item_listed_twice_is_refused(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    document = ours.plan()
    document["items"].append(dict(document["items"][0]))
    ours.write_plan(document)
    assert_refused(ours, ours.plan_file, "is listed more than once")


def test_an_action_changed_by_hand_is_refused(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    applied = cli("apply", "plan.json", cwd=ours.root, env=ours.env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    sent = len(ours.box.received())
    again = cli("plan", "clips", "--out", "plan.json", cwd=ours.root, env=ours.env)
    assert again.returncode == 0, again.stderr
    document = ours.plan()
    assert {item["action"] for item in document["items"]} == {"unchanged"}
    document["items"][0]["action"] = "create"
    ours.write_plan(document)
    before = ours.state_bytes()
    refused = cli("apply", "plan.json", cwd=ours.root, env=ours.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is create in the plan, but planning it now gives unchanged" in refused.stderr
    assert len(ours.box.received()) == sent
    assert ours.state_bytes() == before


def test_a_plan_moved_to_another_folder_is_applied_from_there(
    projects: tuple[Project, ...], tmp_path: Path
) -> None:
    ours, _ = projects
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "reviewed-plan.json"
    shutil.move(ours.plan_file, moved)
    state = str(ours.root / "reconciler-state.json")
    applied = cli("apply", str(moved), "--state", state, cwd=elsewhere, env=ours.env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(task["path"]["streamName"] for task in ours.box.accepted()) == [
        f"stream-{n}" for n in range(3)
    ]
    # The sources recorded are those `plan` saw, relative to where it ran.
    listed = cli("state", "list", "--state", state, "--format", "json", cwd=elsewhere, env=ours.env)
    sources = {task["source"] for task in json.loads(listed.stdout)["tasks"]}
    assert sources == {f"clips/clip-{n}.yaml" for n in range(3)}


def test_a_manifest_added_since_waits_for_the_next_plan(projects: tuple[Project, ...]) -> None:
    ours, _ = projects
    (ours.root / "clips" / "late.yaml").write_text(MANIFEST.format(n=99))
    applied = cli("apply", "plan.json", cwd=ours.root, env=ours.env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert len(ours.box.accepted()) == 3
