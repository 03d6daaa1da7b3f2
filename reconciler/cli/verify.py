"""verify: look in the buckets for the recordings of the tasks in the state."""

from __future__ import annotations

import gc
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from reconciler.cli.common import (
    Command,
    Quiet,
    Selector,
    StatePath,
    Timezone,
    app,
    errors_reported,
    fail,
    json_failures,
    open_store,
    print_json_text,
    state_location,
)
from reconciler.collector import collector_paused
from reconciler.text import OutputFormat

if TYPE_CHECKING:
    from reconciler.state import State
    from reconciler.verify import Target


class VerifyFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    MARKDOWN = "markdown"


#: The longest --grace: about ten years, as for --settle (a deadline before the calendar's first
#: day could not be computed).
MAX_GRACE_SECONDS = 10 * 366 * 24 * 3600


def _storage_endpoint(value: str | None) -> str | None:
    from reconciler.bucket import check_storage_endpoint

    if value is None or value == "":
        return None
    try:
        return check_storage_endpoint(value)
    except ValueError as error:
        raise typer.BadParameter(
            str(error), param_hint="'--storage-endpoint' (or RECONCILER_STORAGE_ENDPOINT)"
        ) from None


@app.command(cls=Command)
def verify(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Only the tasks of these manifests (files or directories) [default: every "
            "task in the state].",
            show_default=False,
            metavar="[PATH...]",
        ),
    ] = None,
    state: StatePath = None,
    grace: Annotated[
        int,
        typer.Option(
            "--grace",
            min=0,
            max=MAX_GRACE_SECONDS,
            help="Seconds after a clip's last endTime before its file must be in the bucket.",
        ),
    ] = 1800,
    storage_endpoint: Annotated[
        str | None,
        typer.Option(
            "--storage-endpoint",
            envvar="RECONCILER_STORAGE_ENDPOINT",
            help="Read every bucket at this S3 endpoint, path-style [default: "
            "https://{saveEndpoint} of each task].",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64, help="Requests in flight.")
    ] = 4,
    selector: Selector = None,
    choice: Annotated[
        VerifyFormat,
        typer.Option("--format", "-f", help="text, json, github (annotations) or markdown."),
    ] = VerifyFormat.TEXT,
    quiet: Quiet = False,
    timezone: Timezone = UTC,
) -> None:
    """Look in the buckets for each due clip's file(s); record what is there. Exit 1 when a
    file is missing or a bucket cannot be read."""
    fmt = OutputFormat(choice)
    json_failures.expect("verify", fmt is OutputFormat.JSON)
    from reconciler.bucket import StorageUnavailable
    from reconciler.client import CredentialsError, credentials_from_env
    from reconciler.verify import (
        VerifyOptions,
        run_verify,
        verify_github,
        verify_json_text,
        verify_markdown,
        verify_text,
    )

    endpoint = _storage_endpoint(storage_endpoint)
    if selector and not paths:
        raise typer.BadParameter(
            "selects manifests by label: give the manifests' PATH too", param_hint="'--selector'"
        )
    try:
        credentials = credentials_from_env()
    except CredentialsError as error:
        fail(
            f"{error}: verify reads the buckets with the JD Cloud credentials in "
            "JDCLOUD_ACCESS_KEY and JDCLOUD_SECRET_KEY (plus JDCLOUD_SESSION_TOKEN for "
            "temporary ones); nothing was read"
        )
    store = open_store(state_location(state))
    with errors_reported():
        if not store.exists():
            fail(
                f"there is no state at {store.shown} {store.missing_reason()}; nothing was "
                "checked. verify looks for the tasks a state records"
            )
        current = store.load()
    # The state lives until the process ends, and what verify builds from it is mostly
    # acyclic: left on, the cyclic collector scans the growing heap again and again (~0.1 s
    # for 3,000 tasks), and all of it once more as the interpreter exits (~0.2 s).
    gc.freeze()
    with collector_paused():
        targets = _targets(paths or [], selector, current, fmt)
        options = VerifyOptions(
            credentials=credentials,
            storage_endpoint=endpoint,
            grace_seconds=grace,
            concurrency=concurrency,
        )
        with errors_reported():
            try:
                result = run_verify(targets, current, store, options, now=datetime.now(UTC))
            except StorageUnavailable as error:
                fail(str(error))
        if fmt is OutputFormat.JSON:
            print_json_text(verify_json_text(result, state_path=store.shown))
        elif fmt is OutputFormat.GITHUB:
            verify_github(result, sys.stdout, zone=timezone)
        elif fmt is OutputFormat.MARKDOWN:
            verify_markdown(result, sys.stdout, zone=timezone)
        else:
            verify_text(result, sys.stdout, quiet=quiet, zone=timezone)
        # Before the collector is on again: its first run would scan all that verify built
        # (~10 ms for 3,000 tasks), only to find it all alive until the process ends.
        gc.freeze()
    raise typer.Exit(result.exit_code)


def _targets(
    paths: list[str], selector: list[str] | None, current: State, fmt: OutputFormat
) -> list[Target]:
    """The tasks to verify: every task in the state, or those of the manifests given (with
    their manifest's line, for annotations), chosen by the selector."""
    from reconciler.verify import Target

    if not paths:
        return [Target(entry, entry.source) for entry in current.entries.values()]
    from reconciler.cli.manifests import _load_tasks_or_exit, _parse_selector
    from reconciler.plan import matches

    chosen = _parse_selector(selector)
    tasks = _load_tasks_or_exit(paths, fmt, "verify", current)
    targets = []
    for task in tasks.tasks:
        entry = current.get(task.hash)
        if entry is not None and (not chosen or matches(task, chosen)):
            targets.append(Target(entry, task.source, task.location.line))
    return targets
