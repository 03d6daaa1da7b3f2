"""The command line: parses arguments, calls the core, hands results to the reporters.

One module per command group: `manifests` (validate, schema, plan, apply), `state` (init and
`state ...`), `services` (sandbox), `receive`, `verify`. What they share (the Typer apps, common options,
error and console plumbing) is in `common`. Importing a group registers its commands on `app`.

A run loads only the group of the command it names (`reconciler verify` never loads the
manifest reader, YAML or the planner); help, completion and a name that is no command load
them all. `from reconciler.cli import app` (tests, embedding) is the app with every command.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reconciler import interrupts
from reconciler.cli.common import abandoned_senders, exiting_after_apply

if TYPE_CHECKING:
    import typer

__all__ = ["COMMAND_GROUPS", "app", "load_commands", "main"]

#: The module (under reconciler.cli) that registers each top-level command, in help order.
COMMAND_GROUPS = {
    "validate": "manifests",
    "schema": "manifests",
    "plan": "manifests",
    "apply": "manifests",
    "receive": "receive",
    "sandbox": "services",
    "init": "state",
    "state": "state",
    "verify": "verify",
}
_ALL_GROUPS = tuple(dict.fromkeys(COMMAND_GROUPS.values()))


def load_commands(argv: Sequence[str] | None = None) -> typer.Typer:
    """Register the commands `argv` (the arguments after the program name) can run: the named
    command's group, or every group when no known command is named (help, `--version`, a
    typo, shell completion). None: every group. The app."""
    from reconciler.cli.common import app

    groups = _ALL_GROUPS
    if argv is not None and "_RECONCILER_COMPLETE" not in os.environ:
        command = next((arg for arg in argv if not arg.startswith("-")), None)
        if command in COMMAND_GROUPS:
            groups = (COMMAND_GROUPS[command],)
    for group in groups:
        importlib.import_module(f"reconciler.cli.{group}")
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point.

    Signals are handled from the package's first line on (reconciler/__init__.py), before
    this module's imports; here, the command runs where a signal unwinds it.
    """
    exiting_after_apply.set()
    try:
        with interrupts.raising():
            load_commands(sys.argv[1:])(prog_name="reconciler")
    except (KeyboardInterrupt, interrupts.Interrupted):
        interrupts.announce()
        code: object = interrupts.EXIT_CODE
    except SystemExit as exit_:
        if not abandoned_senders.is_set():
            raise
        code = exit_.code
    else:
        return
    if abandoned_senders.is_set():
        # The state and the summary are written; the senders still waiting for an answer
        # would hold the interpreter's exit for up to the read timeout.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(interrupts.EXIT_CODE)
