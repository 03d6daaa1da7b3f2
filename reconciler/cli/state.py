"""init and the state commands: create, inspect, repair and migrate a state."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from reconciler.cli.common import (
    DEFAULT_STATE,
    Command,
    LockTimeout,
    NoColor,
    StatePath,
    TaskHash,
    Timezone,
    app,
    errors_reported,
    fail,
    json_failures,
    make_console,
    open_store,
    print_json,
    state_app,
    state_location,
)
from reconciler.report import OutputFormat, visible

if TYPE_CHECKING:
    from reconciler.state import State, StateBackend


class StateFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


# --- init -----------------------------------------------------------------------------------


@app.command(cls=Command)
def init(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help=f"Where to create the state [default: $RECONCILER_STATE or {DEFAULT_STATE}].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an empty state file to commit beside the manifests (once, before the first apply)."""
    store = open_store(state_location(state))
    with errors_reported():
        store.create()  # under the state's lock, which create takes itself
    typer.echo(f"Created an empty state at {store.shown}. {store.created_hint()}")


# --- state ----------------------------------------------------------------------------------


def _existing(store: StateBackend) -> None:
    """The state commands read a state that exists: a missing one is a wrong directory or a
    state not checked out, never "0 tasks" (DESIGN §4). Checked before the lock is taken,
    which would leave a lock file behind."""
    with errors_reported():  # asking a database can fail: unreachable, or a newer schema
        exists = store.exists()
    if not exists:
        fail(
            f"there is no state at {store.shown} {store.missing_reason()}; nothing was read or "
            "changed. If these manifests were really never applied, create an empty state "
            "with `reconciler init`"
        )


def _load(store: StateBackend) -> State:
    _existing(store)
    with errors_reported():
        return store.load()


StateFormatOption = Annotated[StateFormat, typer.Option("--format", "-f", help="text or json.")]


def _entry_json(entry: Any) -> dict[str, Any]:
    return {
        "hash": entry.hash,
        "status": entry.status.value,
        "name": entry.name,
        "source": entry.source,
        "requestId": entry.request_id,
        "updatedAt": entry.updated_at,
        "submittedAt": entry.submitted_at,
        "request": entry.request,
    }


@state_app.command("list", cls=Command)
def state_list(
    state: StatePath = None,
    choice: StateFormatOption = StateFormat.TEXT,
    no_color: NoColor = False,
    timezone: Timezone = UTC,
) -> None:
    """List every task in the state file."""
    fmt = OutputFormat(choice)
    json_failures.expect("state list", fmt is OutputFormat.JSON)
    store = open_store(state_location(state))
    current = _load(store)
    entries = sorted(current.entries.values(), key=lambda e: (e.source, e.name, e.hash))
    if fmt is OutputFormat.JSON:
        document = {
            "formatVersion": 1,
            "command": "state list",
            "state": store.shown,
            "tasks": [_entry_json(entry) for entry in entries],
        }
        print_json(document)
        return
    from rich.table import Table
    from rich.text import Text

    from reconciler.state import utc_timestamp
    from reconciler.timezones import show_time, zone_note

    table = Table(box=None, pad_edge=False)
    for column in ("task", "status", "name", "requestId", "updated", "source"):
        table.add_column(column)
    for entry in entries:
        # Text, not markup: a value of a hand-edited state is shown as it is, escaped.
        table.add_row(
            *(
                Text(visible(value))
                for value in (
                    entry.hash[:12],
                    entry.status.value,
                    entry.name,
                    entry.request_id or "-",
                    show_time(entry.updated_at, timezone),
                    entry.source,
                )
            )
        )
    console = make_console(no_color)
    note = zone_note(timezone, utc_timestamp(datetime.now(UTC)))
    if entries:
        if note is not None:
            console.print(note, markup=False)
        console.print(table)
    pending = sum(1 for entry in entries if entry.status.value == "pending")
    console.print(
        f"{len(entries)} tasks in {store.shown}" + (f", {pending} pending." if pending else ".")
    )


@state_app.command("show", cls=Command)
def state_show(
    task: TaskHash,
    state: StatePath = None,
    choice: StateFormatOption = StateFormat.TEXT,
    timezone: Timezone = UTC,
) -> None:
    """Show one task: status, requestId, and the exact request it sends."""
    fmt = OutputFormat(choice)
    json_failures.expect("state show", fmt is OutputFormat.JSON)
    store = open_store(state_location(state))
    current = _load(store)
    with errors_reported():
        entry = current.find(task)
    document = _entry_json(entry)
    if fmt is OutputFormat.JSON:
        wrapped = {
            "formatVersion": 1,
            "command": "state show",
            "state": store.shown,
            "task": document,
        }
        print_json(wrapped)
        return
    from reconciler.timezones import show_time

    for key in ("hash", "status", "name", "source", "requestId", "updatedAt", "submittedAt"):
        value = document[key]
        shown = (
            "-" if value is None else show_time(value, timezone) if key.endswith("At") else value
        )
        typer.echo(f"{key + ':':13} {visible(str(shown))}")
    typer.echo("request:")
    typer.echo(visible(json.dumps(entry.request, indent=2, ensure_ascii=False, sort_keys=True)))


@state_app.command("rm", cls=Command)
def state_rm(
    task: TaskHash,
    state: StatePath = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    lock_timeout: LockTimeout = 60.0,
) -> None:
    """Forget a task. The next apply submits it again if a manifest still asks for it."""
    store = open_store(state_location(state), lock_timeout)
    _existing(store)
    with errors_reported(), store.lock():
        current = store.load()
        entry = current.find(task)
        warning = (
            f"{entry.name} ({entry.hash[:12]}) is {entry.status.value}: once forgotten, the next "
            "apply submits it again if a manifest still asks for it."
        )
        if not yes:
            if not sys.stdin.isatty():
                fail(f"{warning} Pass --yes to confirm.")
            typer.confirm(f"{warning} Forget it?", abort=True)
        store.write(current.without(entry.hash))
    typer.echo(f"Removed {entry.name} ({entry.hash[:12]}) from {store.shown}.")


@state_app.command("mark-submitted", cls=Command)
def state_mark_submitted(
    task: TaskHash,
    request_id: Annotated[
        str, typer.Option("--request-id", help="The requestId JD Cloud gave (from its console).")
    ],
    state: StatePath = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace the requestId of a task already recorded submitted."),
    ] = False,
    lock_timeout: LockTimeout = 60.0,
) -> None:
    """Record a pending task as submitted, after checking at JD Cloud that it exists."""
    from reconciler.state import StateEntry, TaskStatus, utc_timestamp

    _check_request_id(request_id)
    store = open_store(state_location(state), lock_timeout)
    _existing(store)
    with errors_reported(), store.lock():
        current = store.load()
        entry = current.find(task)
        if (
            entry.status is TaskStatus.SUBMITTED
            and entry.request_id != request_id.strip()
            and not force
        ):
            fail(
                f"{entry.name} ({entry.hash[:12]}) is already submitted with requestId "
                f"{entry.request_id}; the state was not changed. If {request_id.strip()} is "
                "the right one, pass --force"
            )
        stamp = utc_timestamp(datetime.now(UTC))
        marked = StateEntry(
            entry.hash,
            TaskStatus.SUBMITTED,
            entry.name,
            entry.source,
            entry.request,
            stamp,
            request_id.strip(),
            stamp,
            entry.external_id,
        )
        store.write(current.with_entries([marked]))
    typer.echo(
        f"Marked {entry.name} ({entry.hash[:12]}) submitted, requestId {request_id.strip()}."
    )


def _check_request_id(request_id: str) -> None:
    """A usage error for a requestId that is empty or holds a character a terminal would act
    on (it is stored, and `state list` prints it): DESIGN §3, values typed on the command line
    that end up in the state refuse control characters."""
    from reconciler.schema import hidden_character

    if not request_id.strip():
        raise typer.BadParameter("must not be empty", param_hint="'--request-id'")
    what = hidden_character(request_id.strip())
    if what is None and visible(request_id) != request_id:
        what = "contains a control character"
    if what is not None:
        raise typer.BadParameter(
            f"'{visible(request_id)}' {what}: a requestId is letters and digits, as JD "
            "Cloud's console shows it; the state was not changed",
            param_hint="'--request-id'",
        )


@state_app.command("migrate", cls=Command)
def state_migrate(
    source: Annotated[
        str,
        typer.Argument(
            help="The state to copy: a file path or a postgresql:// URI.", metavar="FROM"
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(help="Where to copy it (new or empty): a file path or a URI.", metavar="TO"),
    ],
    lock_timeout: LockTimeout = 60.0,
) -> None:
    """Copy a state between a file and a database (either way), verified entry by entry."""
    from reconciler.state.migrate import migrate

    origin = open_store(source, lock_timeout)
    destination = open_store(target, lock_timeout)
    with errors_reported():
        done = migrate(origin, destination)
    kind = "sandbox " if done.sandbox else ""
    typer.echo(
        f"Migrated {done.tasks} {kind}tasks ({done.submitted} submitted, {done.pending} pending) "
        f"from {origin.shown} to {destination.shown}; verified entry by entry."
    )
    typer.echo(
        f"note: {origin.shown} was left as it was: point every plan and apply at "
        f"{destination.shown} now, and retire the old state so nothing applies against it."
    )
