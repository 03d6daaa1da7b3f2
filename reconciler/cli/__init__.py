"""The command line: parses arguments, calls the core, hands results to the reporters.

One module per command group: `manifests` (validate, schema, plan, apply), `state` (init and
`state ...`), `services` (sandbox), `verify`. What they share (the Typer apps, common options,
error and console plumbing) is in `common`. Importing a group registers its commands on `app`.
"""

from __future__ import annotations

import os
import sys

from reconciler import interrupts
from reconciler.cli import manifests, services, state, verify
from reconciler.cli.common import abandoned_senders, app, exiting_after_apply

__all__ = ["app", "main", "manifests", "services", "state", "verify"]


def main() -> None:
    """Console-script entry point.

    Signals are handled from the package's first line on (reconciler/__init__.py), before
    this module's imports; here, the command runs where a signal unwinds it.
    """
    exiting_after_apply.set()
    try:
        with interrupts.raising():
            app(prog_name="reconciler")
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
