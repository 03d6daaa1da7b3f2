"""validate, schema, plan and apply: the commands that read manifests."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from reconciler.cli.common import (
    SETTLE_HELP,
    Command,
    LockTimeout,
    NoColor,
    Paths,
    Quiet,
    Selector,
    Settle,
    StatePath,
    Timezone,
    Verbose,
    abandoned_senders,
    app,
    checked_endpoint,
    errors_reported,
    exiting_after_apply,
    fail,
    json_failures,
    make_console,
    open_store,
    print_json,
    settle_in_range,
    state_location,
    state_origin,
    warn_if_missing,
)
from reconciler.interrupts import Interrupted
from reconciler.text import OutputFormat

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.apply import ApplyOptions
    from reconciler.notify import Current, NotifyConfig
    from reconciler.plan import Plan
    from reconciler.sandbox import Sandbox
    from reconciler.state import State, StateBackend
    from reconciler.tasks import TaskSet


class ValidateFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    JUNIT = "junit"


class PlanFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    MARKDOWN = "markdown"


def _load_tasks_or_exit(
    paths: list[str],
    fmt: OutputFormat,
    command: str,
    current: State,
    selector: Mapping[str, str] | None = None,
) -> TaskSet:
    """Manifests for plan/apply; any invalid one stops the run before anything is planned.
    So does a notify URL's `${NAME}` that the environment cannot fill (of the configs
    `selector` picks).

    Loaded after the state, so tasks already recorded share the state's request objects.
    """
    from reconciler.report import problem_annotation, validate_json, validate_summary
    from reconciler.tasks import load_tasks

    result = load_tasks(paths, known=current.requests())
    if result.configs:
        from reconciler.notify import with_substitution_problems

        result = with_substitution_problems(result, os.environ, selector or {})
    # The state and the tasks live until the process ends; leaving them out of the cyclic
    # collector's scans saves a full pass over a large heap (~0.2 s for 30,000 manifests).
    gc.freeze()
    if result.ok:
        return result
    if fmt is OutputFormat.JSON:
        document = validate_json(result)
        document["command"] = command
        print_json(document)
    else:
        for problem in result.problems:
            if fmt is OutputFormat.GITHUB:
                typer.echo(problem_annotation(problem, f"reconciler {command}"))
            else:
                typer.echo(str(problem))
        typer.echo(validate_summary(result))
    fail(f"the manifests have problems; nothing was {'planned' if command == 'plan' else 'sent'}")


def _print_ignored(tasks: TaskSet, fmt: OutputFormat, verbose: bool) -> None:
    """With --verbose, what a .reconcilerignore left out, and by which pattern."""
    from reconciler.report import ignored_lines

    if verbose and fmt is OutputFormat.TEXT:
        for line in ignored_lines(tasks):
            typer.echo(line)


def _parse_selector(expressions: list[str] | None) -> dict[str, str]:
    from reconciler.plan import parse_selector

    try:
        return parse_selector(expressions or [])
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--selector'") from None


# --- notify URLs: what is set now, read before planning ---------------------------------------

ReadCurrent = Callable[["Sequence[NotifyConfig]"], "Mapping[str, Current]"]


class _NotifyReader:
    """Reads the notify URLs set now, for plan and apply (notify.read_current): with the
    credentials from the environment at the endpoint, or in the sandbox apply runs against,
    started here when first needed (then apply sends to it too). Without credentials, each
    is unknown, with a warning."""

    def __init__(
        self, endpoint: str | None, *, sandbox: bool = False, stack: contextlib.ExitStack | None
    ) -> None:
        self.endpoint, self.sandbox, self.stack = endpoint, sandbox, stack
        self.box: Sandbox | None = None

    def __call__(self, configs: Sequence[NotifyConfig]) -> Mapping[str, Current]:
        from reconciler.client import (
            DEFAULT_ENDPOINT,
            CredentialsError,
            LiveClient,
            credentials_from_env,
        )
        from reconciler.notify import NO_CREDENTIALS, read_current, unknown

        if self.sandbox:
            if self.box is None:
                from reconciler.sandbox import running_sandbox

                assert self.stack is not None, "a sandbox read needs a stack to run it in"
                self.box = self.stack.enter_context(running_sandbox())
            credentials, endpoint = self.box.credentials, self.box.url
        else:
            try:
                credentials = credentials_from_env()
            except CredentialsError as error:
                typer.echo(
                    f"warning: {error}, so the notify URLs set now cannot be read: each is "
                    "planned as `update`",
                    err=True,
                )
                return {config.publish_domain: unknown(NO_CREDENTIALS) for config in configs}
            endpoint = self.endpoint or DEFAULT_ENDPOINT
        with LiveClient(credentials, endpoint=endpoint) as client:
            return read_current(client, configs)


def _with_configs(
    the_plan: Plan,
    configs: Sequence[NotifyConfig],
    selector: Mapping[str, str],
    read: ReadCurrent,
    *,
    refuse_stopped: bool = False,
) -> Plan:
    """The plan with its notify URLs compared (notify.plan_configs) with what `read` finds set
    now. `refuse_stopped` (a real apply): a read refused with 401, or an endpoint that cannot
    be reached, stops the run before anything is sent."""
    if not configs:
        return the_plan
    from reconciler.notify import plan_configs, selected, unknown_warnings

    chosen = selected(configs, selector)
    if not chosen:
        return the_plan
    current = read(chosen)
    stopped = next((now for now in current.values() if now.stops_run), None)
    if refuse_stopped and stopped is not None:
        reason = stopped.reason or "the notify URLs could not be read"
        fail(reason if reason.endswith("nothing was sent") else f"{reason}; nothing was sent")
    items = plan_configs(chosen, current, os.environ)
    for warning in unknown_warnings(items):
        typer.echo(f"warning: {warning}", err=True)
    return dataclasses.replace(the_plan, configs=items)


def _print_plan(
    plan: Plan, fmt: OutputFormat, no_color: bool, verbose: bool, quiet: bool, zone: tzinfo = UTC
) -> None:
    from reconciler.report import plan_github, plan_markdown, plan_text

    if fmt is OutputFormat.JSON:
        sys.stdout.write(_plan_document(plan))  # JSON stays in UTC, whatever --timezone says
        json_failures.printed = True
    elif fmt is OutputFormat.GITHUB:
        plan_github(plan, sys.stdout, zone=zone)
    elif fmt is OutputFormat.MARKDOWN:
        plan_markdown(plan, sys.stdout, zone=zone)
    else:
        plan_text(plan, make_console(no_color), verbose=verbose, quiet=quiet, zone=zone)


# --- validate / schema ----------------------------------------------------------------------


@app.command(cls=Command)
def validate(
    paths: Paths,
    choice: Annotated[
        ValidateFormat,
        typer.Option("--format", "-f", help="text, json, github (annotations) or junit."),
    ] = ValidateFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
) -> None:
    """Check manifests against the rules; no network, no state. Exit 1 if any is invalid."""
    fmt = OutputFormat(choice)
    json_failures.expect("validate", fmt is OutputFormat.JSON)
    from reconciler.report import validate_report
    from reconciler.tasks import load_tasks

    result = load_tasks(paths)
    validate_report(result, fmt, sys.stdout, verbose=verbose and not quiet)
    json_failures.printed = fmt is OutputFormat.JSON
    raise typer.Exit(0 if result.ok else 1)


@app.command(cls=Command)
def schema() -> None:
    """Print the manifest JSON Schema (Draft 2020-12)."""
    from reconciler.schema import schema_text

    sys.stdout.write(schema_text())


# --- plan -----------------------------------------------------------------------------------

PlanFormatOption = Annotated[
    PlanFormat,
    typer.Option("--format", "-f", help="text, json, github (annotations) or markdown."),
]


@app.command(cls=Command)
def plan(
    paths: Paths,
    state: StatePath = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Save the plan; `reconciler apply FILE` applies exactly it."
        ),
    ] = None,
    selector: Selector = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            envvar="RECONCILER_ENDPOINT",
            help="API endpoint the notify URLs set now are read from "
            "[default: https://live.jdcloud-api.com].",
            show_default=False,
        ),
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 2 when there is something to submit or a notify URL to update.",
        ),
    ] = False,
    settle: Settle = 300,
    choice: PlanFormatOption = PlanFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
    timezone: Timezone = UTC,
) -> None:
    """Compare manifests with the state: what apply would submit. Sends nothing."""
    fmt = OutputFormat(choice)
    json_failures.expect("plan", fmt is OutputFormat.JSON)
    from reconciler.plan import make_plan

    chosen = _parse_selector(selector)
    endpoint = checked_endpoint(endpoint)
    if out is not None:
        _check_plan_out(out)
    store = open_store(state_location(state))
    with errors_reported():
        current = store.load()
        warn_if_missing(store)
    tasks = _load_tasks_or_exit(paths, fmt, "plan", current, chosen)
    _print_ignored(tasks, fmt, verbose and not quiet)
    _warn_if_selector_matches_nothing(tasks, chosen)
    the_plan = _recording_manifests(
        make_plan(
            tasks.tasks, current, now=datetime.now(UTC), settle_seconds=settle, selector=chosen
        ),
        paths,
    )
    the_plan = _with_configs(the_plan, tasks.configs, chosen, _NotifyReader(endpoint, stack=None))
    _print_plan(the_plan, fmt, no_color, verbose, quiet, timezone)
    if out is not None:
        _save_plan(the_plan, out)
        if fmt is OutputFormat.TEXT:
            typer.echo(f"Saved the plan to {out}; apply it with: reconciler apply {out}")
    raise typer.Exit(2 if detailed_exitcode and the_plan.has_changes else 0)


def _recording_manifests(the_plan: Plan, paths: list[str]) -> Plan:
    """The plan with the manifests it was made from: `apply PLAN.json` loads them again."""
    return dataclasses.replace(the_plan, paths=tuple(paths), directory=os.getcwd())


def _saved_plan_tasks(saved: Plan, plan_file: Path, fmt: OutputFormat, current: State) -> TaskSet:
    """The manifests a saved plan was made from, loaded again where `plan` ran (the paths it
    records are relative to that directory), so that their sources read as they did then."""
    missing = [
        path for path in saved.paths if not os.path.lexists(os.path.join(saved.directory, path))
    ]
    if missing or not saved.paths:
        fail(
            f"{plan_file}: the manifests this plan was made from are missing: "
            f"{', '.join(missing) or '(the plan records none)'} (relative to "
            f"{saved.directory}, where `reconciler plan` ran); nothing was sent. A saved plan "
            "is applied only beside the manifests it was made from"
        )
    with contextlib.chdir(saved.directory):
        return _load_tasks_or_exit(list(saved.paths), fmt, "apply", current, saved.selector)


def _check_plan_out(out: Path) -> None:
    """Refuse a --out that cannot be written before planning, not after."""
    folder = out.parent
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        fail(f"cannot save the plan to {out}: the folder {folder} {what}; nothing was planned")
    if out.is_dir():
        fail(f"cannot save the plan to {out}: it is a folder; nothing was planned")


def _plan_document(the_plan: Plan) -> str:
    """The plan as `--format json` prints it and `--out` saves it: one document, the same."""
    from reconciler.report import plan_json

    return json.dumps(plan_json(the_plan), indent=2, ensure_ascii=False) + "\n"


def _save_plan(the_plan: Plan, out: Path) -> None:
    try:
        out.write_text(_plan_document(the_plan), encoding="utf-8")
    except OSError as error:
        fail(f"cannot save the plan to {out}: {error.strerror or error}")


def _any_config_selected(tasks: TaskSet, chosen: dict[str, str]) -> bool:
    from reconciler.notify import selected

    return bool(selected(tasks.configs, chosen))


def _warn_if_selector_matches_nothing(tasks: TaskSet, chosen: dict[str, str]) -> None:
    from reconciler.plan import matches

    if chosen and not any(matches(task, chosen) for task in tasks.tasks):
        if tasks.configs and _any_config_selected(tasks, chosen):
            return
        wanted = ", ".join(f"{key}={value}" for key, value in chosen.items())
        typer.echo(
            f"warning: no manifest has the label(s) {wanted} (of {len(tasks.tasks)} "
            "manifests): the plan is empty. Check the selector's spelling.",
            err=True,
        )


# --- apply ----------------------------------------------------------------------------------


class _Interrupts:
    """What Ctrl-C / SIGTERM asked for: `stop` after the first, `abort` after the second."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Interrupts]:
    """Ctrl-C / SIGTERM: stop sending new requests, let in-flight ones finish and be recorded.

    The second aborts: apply records the answers already received and returns within a
    second, leaving what is still in flight `pending`. The handler only sets flags, so it can
    never interrupt a journal write halfway; a third unwinds the command (exit 130).
    """
    interrupts = _Interrupts()

    def handler(signum: int, frame: FrameType | None) -> None:
        if interrupts.abort.is_set():
            raise Interrupted  # main(): exit 130 and one line
        if interrupts.stop.is_set():
            interrupts.abort.set()
            typer.echo(
                "Aborting: recording the answers received; requests in flight stay pending.",
                err=True,
            )
            return
        interrupts.stop.set()
        typer.echo(
            "Stopping: no new requests; waiting for those in flight (Ctrl-C again to abort).",
            err=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for sig, old in previous.items():
            # In the console command, apply has written everything by now and the process
            # only exits: an interrupt now would only turn into a traceback at shutdown.
            signal.signal(sig, signal.SIG_IGN if exiting_after_apply.is_set() else old)


def _read_plan_file(path: Path) -> Plan:
    from reconciler.plan import Plan, PlanError

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        fail(f"{path}: cannot read the plan: {error}")
    except json.JSONDecodeError as error:
        fail(f"{path}:{error.lineno}:{error.colno}: the plan is not valid JSON: {error.msg}")
    try:
        return Plan.from_json(document)
    except PlanError as error:
        fail(f"{path}: {error}")


def _plan_file_argument(
    paths: list[str], selector: list[str] | None, settle: int | None
) -> Path | None:
    """The saved plan among apply's paths, if one is given; options that change planning
    beside it are usage errors (the plan was made with its own)."""
    plans = [path for path in paths if path.endswith(".json") and os.path.isfile(path)]
    if not plans:
        return None
    if len(paths) > 1:
        raise typer.BadParameter(
            f"a saved plan ({plans[0]}) must be the only path: it lists its own manifests",
            param_hint="'PATH...'",
        )
    for given, option in ((bool(selector), "--selector"), (settle is not None, "--settle")):
        if given:
            raise typer.BadParameter(
                f"cannot be used with a saved plan ({plans[0]}): the plan was made with its own; "
                f"make a new plan with `reconciler plan ... {option} ... --out FILE`",
                param_hint=f"'{option}'",
            )
    return Path(plans[0])


@app.command(cls=Command)
def apply(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Manifest files or directories, or one plan file saved by `plan --out`.",
            show_default=False,
            metavar="PATH...",
        ),
    ],
    state: StatePath = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            envvar="RECONCILER_ENDPOINT",
            help="API endpoint [default: https://live.jdcloud-api.com].",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64, help="Requests in flight.")
    ] = 4,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; send nothing, write nothing.")
    ] = False,
    retry_pending: Annotated[
        bool,
        typer.Option(
            "--retry-pending",
            help="Also re-send tasks whose earlier outcome is unknown (this may duplicate them).",
        ),
    ] = False,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Run against a local stand-in of the API (no account; own state file).",
        ),
    ] = False,
    selector: Selector = None,
    settle: Annotated[
        int | None,
        typer.Option(
            "--settle",
            min=0,
            help=f"{SETTLE_HELP} [default: 300]",
            show_default=False,
            callback=settle_in_range,
        ),
    ] = None,
    lock_timeout: LockTimeout = 60.0,
    choice: PlanFormatOption = PlanFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
    timezone: Timezone = UTC,
) -> None:
    """Submit every task the plan creates and record each outcome in the state file."""
    fmt = OutputFormat(choice)
    json_failures.expect("apply", fmt is OutputFormat.JSON)
    from reconciler.apply import ApplyOptions, refuse_missing_state, state_for_apply
    from reconciler.client import CredentialsError, credentials_from_env
    from reconciler.plan import DEFAULT_SETTLE_SECONDS, replan_saved
    from reconciler.report import plan_with_recordings

    # Usage errors first: before credentials, the state or the lock are touched.
    plan_file = _plan_file_argument(paths, selector, settle)
    chosen = _parse_selector(selector)
    if not sandbox:
        endpoint = checked_endpoint(endpoint)
    credentials = None
    if not sandbox and not dry_run:
        try:
            credentials = credentials_from_env()
        except CredentialsError as error:
            fail(
                f"{error}: apply needs JD Cloud credentials in JDCLOUD_ACCESS_KEY and "
                "JDCLOUD_SECRET_KEY (plus JDCLOUD_SESSION_TOKEN for temporary ones). To try the "
                "whole flow without an account: reconciler apply --sandbox ..."
            )
    saved = _read_plan_file(plan_file) if plan_file is not None else None
    store = open_store(state_location(state, sandbox=sandbox), lock_timeout)
    origin = state_origin(state, sandbox=sandbox)
    console = make_console(no_color)
    if sandbox and fmt is OutputFormat.TEXT and not quiet:
        console.print(
            f"[bold yellow]SANDBOX[/]: a local stand-in of the Live API, not JD Cloud; "
            f"state goes to {store.shown}."
        )

    # A sandbox started to read the notify URLs set now is the one apply sends to, until the end.
    sandbox_run = contextlib.ExitStack()
    reader = _NotifyReader(endpoint, sandbox=sandbox, stack=sandbox_run)

    def planned(current_state: State) -> Plan:
        from reconciler.notify import configs_of_saved
        from reconciler.plan import make_plan

        now = datetime.now(UTC)
        refuse = not dry_run
        if saved is not None:
            assert plan_file is not None
            manifests = _saved_plan_tasks(saved, plan_file, fmt, current_state)
            again = replan_saved(
                saved, current_state, now=now, tasks=manifests.tasks, configs=manifests.configs
            )
            listed = configs_of_saved(saved.configs, manifests.configs)
            return _with_configs(again, listed, {}, reader, refuse_stopped=refuse)
        tasks = _load_tasks_or_exit(paths, fmt, "apply", current_state, chosen)
        _print_ignored(tasks, fmt, verbose and not quiet)
        _warn_if_selector_matches_nothing(tasks, chosen)
        fresh = make_plan(
            tasks.tasks,
            current_state,
            now=now,
            settle_seconds=DEFAULT_SETTLE_SECONDS if settle is None else settle,
            selector=chosen,
        )
        fresh = _with_configs(fresh, tasks.configs, chosen, reader, refuse_stopped=refuse)
        return _recording_manifests(fresh, paths)

    with sandbox_run, errors_reported():
        if dry_run:
            if not sandbox:
                warn_if_missing(store)
            current = state_for_apply(store, sandbox=sandbox, dry_run=True, origin=origin)
            the_plan = planned(current)
            shown = plan_with_recordings(the_plan, current)
            _print_plan(shown, fmt, no_color, verbose, quiet, timezone)
            if fmt is OutputFormat.TEXT:
                console.print("Dry run: nothing was sent and the state was not changed.")
            raise typer.Exit(0)
        refuse_missing_state(store, sandbox=sandbox)
        with store.lock():
            current = state_for_apply(store, sandbox=sandbox, origin=origin)
            the_plan = planned(current)
            if fmt is OutputFormat.TEXT:
                shown = plan_with_recordings(the_plan, current)
                _print_plan(shown, fmt, no_color, verbose, quiet, timezone)
            box = reader.box  # started to read the notify URLs: apply sends to it as well
            options = ApplyOptions(
                credentials=box.credentials if box is not None else credentials,
                endpoint=box.url if box is not None else endpoint,
                concurrency=concurrency,
                retry_pending=retry_pending,
                sandbox=sandbox,
            )
            code = _apply_and_report(the_plan, current, store, options, fmt, console, quiet)
            if abandoned_senders.is_set():
                sandbox_run.pop_all()  # senders still wait on it: the process exits without it
    raise typer.Exit(code)


def _apply_and_report(
    the_plan: Plan,
    current: State,
    store: StateBackend,
    options: ApplyOptions,
    fmt: OutputFormat,
    console: Console,
    quiet: bool,
) -> int:
    """Run apply with the progress bar and outcome lines, then print its report; the exit code."""
    from reconciler.apply import run_apply, to_send
    from reconciler.report import (
        apply_configs_line,
        apply_github,
        apply_hints,
        apply_json,
        apply_markdown,
        apply_recordings_line,
        apply_summary,
        config_outcome_line,
        outcome_line,
        plan_with_recordings,
    )

    text = fmt is OutputFormat.TEXT
    if options.retry_pending and the_plan.pending_count and text:
        console.print(
            "[yellow]warning[/]: --retry-pending re-sends tasks whose earlier outcome is "
            "unknown; if JD Cloud did create them, the clip is made twice."
        )
    sending = to_send(the_plan, retry_pending=options.retry_pending)
    # Interrupts are handled until the summary is out: a Ctrl-C during the compaction or
    # the printing would otherwise cut them short with a KeyboardInterrupt.
    with _stop_on_signals() as interrupts:
        with contextlib.ExitStack() as stack:
            progress = None
            if text and sending and console.is_terminal and not quiet:
                from rich.progress import Progress

                progress = stack.enter_context(Progress(console=console, transient=True))
                bar = progress.add_task("Submitting", total=len(sending))

            def on_outcome(outcome: Any) -> None:
                if progress is not None:
                    progress.advance(bar)
                if text and (not quiet or outcome.kind != "submitted"):
                    console.print(outcome_line(outcome), markup=False)

            def on_config_outcome(outcome: Any) -> None:
                if text and (not quiet or outcome.kind in ("failed", "not-sent")):
                    console.print(config_outcome_line(outcome), markup=False)

            result = run_apply(
                the_plan,
                current,
                store,
                options,
                stop=interrupts.stop,
                abort=interrupts.abort,
                on_outcome=on_outcome,
                on_config_outcome=on_config_outcome,
            )
            if result.aborted:
                # Senders still wait for an answer: the process exits without them (main()).
                abandoned_senders.set()
        sandbox = options.sandbox
        # What the evidence said of the planned tasks when apply read the state (a saved
        # plan carries none of its own).
        the_plan = plan_with_recordings(the_plan, current)
        if fmt is OutputFormat.JSON:
            document = apply_json(result, the_plan, sandbox=sandbox, state_path=store.shown)
            print_json(document)
        elif fmt is OutputFormat.GITHUB:
            apply_github(result, the_plan, sys.stdout, sandbox=sandbox)
        elif fmt is OutputFormat.MARKDOWN:
            apply_markdown(result, the_plan, sys.stdout, sandbox=sandbox)
        else:
            lead = apply_configs_line(result, tasks_to_send=bool(sending))
            if lead is not None:
                console.print(lead, markup=False)
            recordings = apply_recordings_line(the_plan)
            if recordings:
                console.print(recordings, markup=False)
            console.print(f"[bold]{apply_summary(result, the_plan, sandbox=sandbox)}[/]")
            for hint in apply_hints(result, the_plan, store.shown):
                console.print(f"[yellow]note[/]: {hint}", markup=True)
    return result.exit_code
