"""The `reconciler-validate` hook in .pre-commit-hooks.yaml, run by pre-commit itself.

pre-commit clones a hook repository at a commit and pip-installs it into its own virtualenv,
exactly as it does for users. The commit is a snapshot of this working tree (tracked and
untracked files, .gitignore respected), so the test checks the files as they are now, before
they are committed. (`pre-commit try-repo` would copy only tracked files' changes, and would
miss a new .pre-commit-hooks.yaml or module.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import git

ROOT = Path(__file__).resolve().parent.parent
# goal-1 as a single RecordTask (the examples hold it in a clip set).
GOAL = (ROOT / "tests" / "fixtures" / "sets" / "cup-final-singles" / "goal-1.yaml").read_text(
    encoding="utf-8"
)

pytestmark = pytest.mark.slow


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    return path


def snapshot_of_this_tree(target: Path) -> str:
    """Commit this working tree, as it is now, into a new repository; returns the commit."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    new_repo(target)
    for name in sorted(set(listed.split("\0")) - {""}):
        source = ROOT / name
        if not os.path.lexists(source):
            continue  # deleted in the working tree, not yet in the index
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination, follow_symlinks=False)
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "snapshot of the working tree")
    return git(target, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("hook-repo") / "reconciler"
    return path, snapshot_of_this_tree(path)


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One home for the module: pre-commit builds the hook's virtualenv once and reuses it.
    return tmp_path_factory.mktemp("pre-commit-home")


def user_repo(
    path: Path, hook_repo: tuple[Path, str], hook: dict[str, object] | None = None
) -> Path:
    """A user's repository: manifests in clips/, a GitHub workflow, our hook configured."""
    repo = new_repo(path)
    where, rev = hook_repo
    config = {
        "repos": [
            {
                "repo": where.as_uri(),
                "rev": rev,
                "hooks": [{"id": "reconciler-validate", **(hook or {})}],
            }
        ]
    }
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (repo / "clips").mkdir()
    (repo / "clips" / "goal-1.yaml").write_text(GOAL, encoding="utf-8")
    workflows = repo / ".github" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "ci" / "github-actions.yml", workflows / "reconciler.yml")
    git(repo, "add", "-A")
    return repo


def pre_commit(
    repo: Path, home: Path, *args: str, command: tuple[str, ...] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRE_COMMIT")}
    env.update(PRE_COMMIT_HOME=str(home), NO_COLOR="1", PRE_COMMIT_COLOR="never")
    return subprocess.run(
        list(command) if command else [sys.executable, "-m", "pre_commit", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_hook_manifest_is_valid_for_pre_commit(tmp_path: Path) -> None:
    result = pre_commit(ROOT, tmp_path, "validate-manifest", ".pre-commit-hooks.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hook_definition_is_what_the_readme_promises() -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "reconciler-validate"
    assert hook["entry"] == "reconciler validate"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is True
    assert "files:" in hook["description"]  # tells users to narrow it to their manifests


def test_hook_passes_valid_manifests_and_blocks_a_commit_with_an_invalid_one(
    tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path
) -> None:
    repo = user_repo(tmp_path / "user", hook_repo)

    result = pre_commit(repo, pre_commit_home, "run", "--all-files")
    # The hidden .github/workflows/*.yml and .pre-commit-config.yaml are not manifests: skipped.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconciler validate" in result.stdout
    assert "Passed" in result.stdout

    bad = GOAL.replace("saveBucket:", "saveBuckte:").replace("goal-1", "goal-9")
    (repo / "clips" / "goal-9.yaml").write_text(bad, encoding="utf-8")
    git(repo, "add", "clips/goal-9.yaml")
    result = pre_commit(repo, pre_commit_home, "run")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed" in result.stdout
    assert "clips/goal-9.yaml:17:3: spec.saveBuckte: unknown field 'saveBuckte'" in result.stdout
    assert "clips/goal-9.yaml:10:1: spec.saveBucket: required field is missing" in result.stdout

    # As a Git hook: the commit is refused, then accepted once the manifest is fixed.
    assert pre_commit(repo, pre_commit_home, "install").returncode == 0
    commit = ("git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "clips")
    result = pre_commit(repo, pre_commit_home, command=commit)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "spec.saveBuckte" in result.stdout + result.stderr
    (repo / "clips" / "goal-9.yaml").write_text(
        GOAL.replace("goal-1", "goal-9").replace("19:13:10Z", "19:13:20Z"), encoding="utf-8"
    )
    git(repo, "add", "clips/goal-9.yaml")
    result = pre_commit(repo, pre_commit_home, command=commit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert git(repo, "log", "--format=%s") == "clips"


def test_other_yaml_needs_the_files_setting(
    tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path
) -> None:
    # Why the description tells users to set `files:`: any other YAML is read as a manifest.
    repo = user_repo(tmp_path / "default", hook_repo)
    (repo / "docker-compose.yml").write_text("services: {}\n", encoding="utf-8")
    git(repo, "add", "-A")
    result = pre_commit(repo, pre_commit_home, "run", "--all-files")
    assert result.returncode == 1
    assert "docker-compose.yml:1:1: apiVersion: required field is missing" in result.stdout

    narrowed = user_repo(tmp_path / "narrowed", hook_repo, {"files": "^clips/"})
    (narrowed / "docker-compose.yml").write_text("services: {}\n", encoding="utf-8")
    git(narrowed, "add", "-A")
    result = pre_commit(narrowed, pre_commit_home, "run", "--all-files")
    assert result.returncode == 0, result.stdout + result.stderr


def test_repeated_names_among_the_staged_files_are_found(
    tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path
) -> None:
    # require_serial: all the files go to one `reconciler validate`, which compares them.
    repo = user_repo(tmp_path / "user", hook_repo, {"files": "^clips/"})
    twin = GOAL.replace("19:13:10Z", "19:13:20Z")  # another request, the same name
    (repo / "clips" / "goal-1-again.yaml").write_text(twin, encoding="utf-8")
    git(repo, "add", "-A")
    result = pre_commit(repo, pre_commit_home, "run", "--all-files")
    assert result.returncode == 1
    assert "name 'cup-final-goal-1' is already used at clips/goal-1" in result.stdout
