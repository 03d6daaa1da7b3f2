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
from reconciler.text import OutputFormat, visible

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


def _entry_json(entry: Any, current: State) -> dict[str, Any]:
    summary = current.recording(entry.hash)
    return {
        "hash": entry.hash,
        "status": entry.status.value,
        "name": entry.name,
        "source": entry.source,
        "requestId": entry.request_id,
        "updatedAt": entry.updated_at,
        "submittedAt": entry.submitted_at,
        "request": entry.request,
        # The id the service was sent (its callbacks echo it); null: none recorded.
        "taskExternalId": entry.sent_external_id,
        "recording": summary.to_json() if summary is not None else None,
    }


def _recording_words(current: State, entry: Any) -> str:
    """`recorded`, `awaiting recording`, `pending settled by callback; recorded`, ... and
    `no evidence yet` for a pending task (its outcome is unknown), as plan says it."""
    summary = current.recording(entry.hash)
    if summary is None:
        return "-"
    return summary.words if summary.state is not None else "no evidence yet"


@state_app.command("list", cls=Command)
def state_list(
    state: StatePath = None,
    choice: StateFormatOption = StateFormat.TEXT,
    no_color: NoColor = False,
    timezone: Timezone = UTC,
    unmatched: Annotated[
        bool,
        typer.Option(
            "--unmatched",
            help="List the record callbacks no task could be told from, instead of the tasks.",
        ),
    ] = False,
) -> None:
    """List every task in the state, with what the evidence says of its recording."""
    fmt = OutputFormat(choice)
    json_failures.expect("state list", fmt is OutputFormat.JSON)
    store = open_store(state_location(state))
    current = _load(store)
    if unmatched:
        _list_unmatched(current, store.shown, fmt, no_color, timezone)
        return
    entries = sorted(current.entries.values(), key=lambda e: (e.source, e.name, e.hash))
    if fmt is OutputFormat.JSON:
        document = {
            "formatVersion": 1,
            "command": "state list",
            "state": store.shown,
            "tasks": [_entry_json(entry, current) for entry in entries],
            "unmatchedCallbacks": len(current.unmatched),
        }
        print_json(document)
        return
    from rich.table import Table
    from rich.text import Text

    from reconciler.state import utc_timestamp
    from reconciler.timezones import show_time, zone_note

    table = Table(box=None, pad_edge=False)
    for column in ("task", "status", "recording", "outputs", "name", "requestId", "updated"):
        table.add_column(column)
    table.add_column("source")
    for entry in entries:
        # Text, not markup: a value of a hand-edited state is shown as it is, escaped.
        table.add_row(
            *(
                Text(visible(value))
                for value in (
                    entry.hash[:12],
                    entry.status.value,
                    _recording_words(current, entry),
                    str(len(current.recordings_of(entry.hash))),
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
    settled = sum(1 for entry in entries if current.settled(entry.hash))
    pending = sum(1 for entry in entries if entry.status.value == "pending") - settled
    counts = [f"{pending} pending"] if pending else []
    counts += [f"{settled} pending settled by evidence (never sent again)"] if settled else []
    console.print(
        f"{len(entries)} tasks in {store.shown}" + (f", {', '.join(counts)}." if counts else ".")
    )
    for line in _evidence_lines(current, store.shown):
        console.print(line, markup=False)


def _evidence_lines(current: State, shown: str) -> list[str]:
    """`Recordings: 3 recorded, 1 recording failed.` and where the unmatched callbacks are."""
    from reconciler.report import RECORDING_WORDS

    counts = dict.fromkeys(RECORDING_WORDS, 0)
    for key in current.entries:
        summary = current.recording(key)
        if summary is not None and summary.state is not None:
            counts[summary.state.value] += 1
    lines = []
    if any(counts.values()):
        parts = [f"{count} {words}" for words, count in counts.items() if count]
        lines.append(f"Recordings: {', '.join(parts)}.")
    if current.unmatched:
        number = len(current.unmatched)
        lines.append(
            f"{number} record callback{'s' if number != 1 else ''} matched no task: "
            f"reconciler state list --unmatched --state {shown}"
        )
    return lines


def _callback_fields(callback: Any) -> dict[str, Any]:
    """What `state list --unmatched` shows of a kept callback, read as leniently as the
    receiver read it (the stream, format, status and taskExternalId it names, if any)."""
    from reconciler.callbacks import CallbackError, parse_callback

    try:
        read = parse_callback(dict(callback.body))
    except CallbackError:  # kept as received; whatever it holds, it is still listed
        return {"stream": None, "format": None, "status": None, "taskExternalId": None}
    named = any(part is not None for part in (read.publish_domain, read.app_name, read.stream_name))
    return {
        "stream": read.stream if named else None,
        "format": read.format,
        "status": read.status,
        "taskExternalId": read.external_id,
    }


def _list_unmatched(
    current: State, shown: str, fmt: OutputFormat, no_color: bool, timezone: Any
) -> None:
    """`state list --unmatched`: each callback no task could be told from, in arrival order,
    with the reason; text escaped (a callback's fields are anyone's text)."""
    kept = list(current.unmatched)
    if fmt is OutputFormat.JSON:
        print_json(
            {
                "formatVersion": 1,
                "command": "state list",
                "state": shown,
                "unmatched": [
                    {
                        "id": callback.id,
                        "receivedAt": callback.received_at,
                        "reason": callback.reason,
                        **_callback_fields(callback),
                        "callback": callback.body,
                    }
                    for callback in kept
                ],
            }
        )
        return
    from rich.table import Table
    from rich.text import Text

    from reconciler.timezones import show_time

    console = make_console(no_color)
    if not kept:
        console.print(f"No unmatched record callbacks in {shown}.", markup=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("received", "reason", "stream", "format", "status", "taskExternalId"):
        table.add_column(column)
    for callback in kept:
        fields = _callback_fields(callback)
        table.add_row(
            *(
                Text(visible(value if value is not None else "-"))
                for value in (
                    show_time(callback.received_at, timezone),
                    callback.reason,
                    fields["stream"],
                    fields["format"],
                    fields["status"],
                    fields["taskExternalId"],
                )
            )
        )
    console.print(table)
    number = len(kept)
    console.print(
        f"{number} unmatched record callback{'s' if number != 1 else ''} in {shown}: kept "
        "as received, matched to no task (`--format json` shows each body).",
        markup=False,
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
    document = _entry_json(entry, current)
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

    settled = current.settled(entry.hash)
    for key in ("hash", "status", "name", "source", "requestId", "updatedAt", "submittedAt"):
        value = document[key]
        shown = (
            "-" if value is None else show_time(value, timezone) if key.endswith("At") else value
        )
        if key == "requestId" and value is None and settled:
            shown = "unknown (the evidence settled this pending task; it is never sent again)"
        typer.echo(f"{key + ':':13} {visible(str(shown))}")
    for line in _recording_lines(current, entry, timezone):
        typer.echo(line)
    typer.echo("request:")
    text = json.dumps(entry.request, indent=2, ensure_ascii=False, sort_keys=True)
    # Line by line: the values' controls escaped, the JSON's own line breaks kept.
    typer.echo("\n".join(visible(line) for line in text.split("\n")))


def _recording_lines(current: State, entry: Any, timezone: Any) -> list[str]:
    """`state show`'s lines on the evidence: the taskExternalId sent, the recording, and every
    output (format, status, source, when, downloadUrl, fileSize, duration), escaped."""
    from reconciler.timezones import show_time

    sent = entry.sent_external_id
    lines = [
        f"{'taskExternalId:':13} {visible(sent) if sent is not None else 'none recorded'}",
        f"{'recording:':13} {_recording_words(current, entry)}",
    ]
    outputs = current.recordings_of(entry.hash)
    lines.append(f"outputs: {len(outputs) if outputs else 'none yet'}")
    for recording in outputs:
        lines.append(
            f"  - {visible(recording.format) or '(no format)'}: {visible(recording.status)}, "
            f"from {recording.source.value} at {show_time(recording.received_at, timezone)}"
        )
        for key, value in (
            ("downloadUrl", recording.download_url),
            ("fileSize", recording.file_size),
            ("duration", recording.duration),
        ):
            lines.append(f"    {key + ':':12} {visible(value) if value is not None else '-'}")
    return lines


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
