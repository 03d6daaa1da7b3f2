"""What a command loads: a run loads only its own command group (reconciler/cli/__init__.py).

Commands that only read a state (verify, receive, state list) must not load the manifest
reader, YAML or the planner; help, completion and a mistyped command still see every command.
Each case runs the real entry point in a fresh interpreter and lists what it imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import COMMAND_GROUPS, load_commands

ROOT = Path(__file__).resolve().parent.parent
PLANNING = {
    "yaml",
    "reconciler.manifests",
    "reconciler.tasks",
    "reconciler.plan",
    "reconciler.report",
}


# Runs the entry point as `python -m reconciler ARGS` does, and writes what was imported as
# the interpreter exits (importtime would miss what importlib.import_module loads itself).
RUN = """
import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n"))
sys.argv = ["reconciler", *sys.argv[1:]]
runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
"""


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The modules `python -m reconciler ARGS` imported, and its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {}), "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
    )
    listed = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")]
    assert listed, result.stderr
    return set(listed[-1].split()[1:]), result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "--help"),
        ("verify", "--state", "no-such-state.json"),
        ("receive", "--help"),
        ("state", "list", "--help"),
    ],
)
def test_commands_that_read_only_a_state_load_no_manifest_reader(args: tuple[str, ...]) -> None:
    modules, _ = imported(*args)
    assert "reconciler.cli.common" in modules, "the import trace was read"
    assert not modules & PLANNING, sorted(modules & PLANNING)
    assert "reconciler.cli.manifests" not in modules


def test_a_command_loads_its_own_group_and_no_other() -> None:
    modules, _ = imported("verify", "--help")
    assert "reconciler.cli.verify" in modules
    assert not {"reconciler.cli.state", "reconciler.cli.services", "reconciler.cli.receive"} & (
        modules
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--help",), None),
        ((), None),
        (("verfy",), None),  # a typo: "No such command" names the closest, so all are loaded
        (("--version",), None),
        (("verify",), {"_RECONCILER_COMPLETE": "bash_complete", "COMP_WORDS": "reconciler v"}),
    ],
)
def test_help_typos_and_completion_see_every_command(
    args: tuple[str, ...], env: dict[str, str] | None
) -> None:
    modules, _ = imported(*args, env=env)
    groups = {f"reconciler.cli.{group}" for group in set(COMMAND_GROUPS.values())}
    assert groups <= modules, sorted(groups - modules)


def test_top_level_help_lists_every_command() -> None:
    _, out = imported("--help")
    for command in COMMAND_GROUPS:
        assert f" {command} " in out or f" {command}\n" in out, command


def test_command_groups_names_each_command_where_it_is_registered() -> None:
    """COMMAND_GROUPS is written out (reading it off the app would load every group): it must
    name every top-level command, each with the module that registers it."""
    app = load_commands()
    registered = {
        (command.name or command.callback.__name__.replace("_", "-")): command.callback.__module__
        for command in app.registered_commands
        if command.callback is not None
    }
    for group in app.registered_groups:
        typer_instance = group.typer_instance
        assert typer_instance is not None and group.name is not None
        commands = typer_instance.registered_commands
        assert commands and commands[0].callback is not None
        registered[group.name] = commands[0].callback.__module__
    assert {name: f"reconciler.cli.{module}" for name, module in COMMAND_GROUPS.items()} == (
        registered
    )
