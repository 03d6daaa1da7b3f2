"""The command line: parses arguments, calls the core, hands results to the reporters."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core

from reconciler import __version__
from reconciler.report import OutputFormat

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.apply import ApplyOptions
    from reconciler.plan import Plan
    from reconciler.state import State, StateBackend
    from reconciler.tasks import TaskSet

DEFAULT_STATE = "reconciler-state.json"
SANDBOX_STATE = "reconciler-state.sandbox.json"


class _Command(typer.core.TyperCommand):
    """Usage lines that show an argument's metavar as written (`PATH...`), where Typer would
    wrap a required one in braces (`{PATH...}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument) and param.metavar:
                pieces.append(param.metavar)
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


app = typer.Typer(
    name="reconciler",
    help=(
        "Keep JD Cloud Live clip-recording tasks (addLiveRecordTask) declared in YAML and "
        "submit each exactly once."
    ),
    no_args_is_help=True,
    # Tracebacks with local variables could show credentials; errors are reported by us.
    pretty_exceptions_enable=False,
    # Help texts say `[default: ...]`; as Rich markup those brackets would vanish.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state_app = typer.Typer(
    help="Inspect and repair the state file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(state_app, name="state")

Paths = Annotated[
    list[str],
    typer.Argument(
        help="Manifest files or directories (walked recursively, hidden entries skipped).",
        show_default=False,
        metavar="PATH...",
    ),
]
TaskHash = Annotated[
    str, typer.Argument(help="Task hash or a unique prefix (6+ characters).", metavar="HASH")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems and the summary.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Print more detail.")]
NoColor = Annotated[
    bool, typer.Option("--no-color", help="No colours (also when NO_COLOR is set).")
]
StatePath = Annotated[
    str | None,
    typer.Option(
        "--state",
        help=f"State file [default: $RECONCILER_STATE or {DEFAULT_STATE}; "
        f"{SANDBOX_STATE} with --sandbox].",
        show_default=False,
    ),
]
Selector = Annotated[
    list[str] | None,
    typer.Option(
        "--selector", "-l", help="Only manifests with this label (key=value; repeatable)."
    ),
]
SETTLE_HELP = (
    "Seconds after a clip's last endTime before it is submitted (the recording must exist first)."
)
Settle = Annotated[int, typer.Option("--settle", min=0, help=SETTLE_HELP)]
LockTimeout = Annotated[
    float,
    typer.Option("--lock-timeout", min=0, help="Seconds to wait for another apply's lock."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reconciler {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Keep JD Cloud Live clip-recording tasks declared in YAML; submit each exactly once."""


# --- shared plumbing ------------------------------------------------------------------------


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


class StateFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _console(no_color: bool, *, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    plain = no_color or bool(os.environ.get("NO_COLOR"))
    return Console(
        no_color=plain,
        # no_color alone still writes bold and dim; no colour system writes no escapes at all.
        color_system=None if plain else "auto",
        soft_wrap=True,
        highlight=False,
        stderr=stderr,
        # In a pipe or a CI log there is no screen to fit: never cut a hash or a name short.
        width=None if stream.isatty() else 4096,
    )


def _state_location(given: str | None, *, sandbox: bool = False) -> str:
    if given:
        return given
    if sandbox:
        # A sandbox run never reads $RECONCILER_STATE: it must not mark real tasks submitted.
        return SANDBOX_STATE
    return os.environ.get("RECONCILER_STATE") or DEFAULT_STATE


def _store(location: str, lock_timeout: float = 60.0) -> StateBackend:
    """The state `location` names (a file path or a postgresql:// URI); exit 2 if it names none."""
    from reconciler.state import StateError, StateLocationError, open_state

    try:
        return open_state(location, lock_timeout=lock_timeout)
    except StateLocationError as error:
        raise typer.BadParameter(str(error), param_hint="'--state' (or RECONCILER_STATE)") from None
    except StateError as error:
        _fail(str(error))


def _warn_if_missing(store: StateBackend) -> None:
    if not store.exists():
        typer.echo(
            f"warning: there is no state at {store.shown}, so every clip is planned as `create`. "
            "If these manifests were applied before, this is the wrong directory or the state "
            "was not checked out (apply would refuse to run); if they never were, create the "
            "state with `reconciler init`.",
            err=True,
        )


def _checked_endpoint(endpoint: str | None) -> str | None:
    """A usage error (exit 2) for an endpoint that is not an http(s) URL, before anything runs."""
    from reconciler.client import check_endpoint

    if endpoint is None:
        return None
    try:
        return check_endpoint(endpoint)
    except ValueError as error:
        raise typer.BadParameter(
            str(error), param_hint="'--endpoint' (or RECONCILER_ENDPOINT)"
        ) from None


@contextlib.contextmanager
def _errors_reported() -> Iterator[None]:
    """Known failures become `error: ...` and exit 1, never a traceback."""
    from reconciler.plan import PlanError
    from reconciler.state import StateError

    try:
        yield
    except (StateError, PlanError) as error:
        _fail(str(error))


def _load_tasks_or_exit(
    paths: list[str], fmt: OutputFormat, command: str, current: State
) -> TaskSet:
    """Manifests for plan/apply; any invalid one stops the run before anything is planned.

    Loaded after the state, so tasks already recorded share the state's request objects.
    """
    from reconciler.report import problem_annotation, validate_json, validate_summary
    from reconciler.tasks import load_tasks

    result = load_tasks(paths, known=current.requests())
    # The state and the tasks live until the process ends; leaving them out of the cyclic
    # collector's scans saves a full pass over a large heap (~0.2 s for 30,000 manifests).
    gc.freeze()
    if result.ok:
        return result
    if fmt is OutputFormat.JSON:
        document = validate_json(result)
        document["command"] = command
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for problem in result.problems:
            if fmt is OutputFormat.GITHUB:
                typer.echo(problem_annotation(problem, f"reconciler {command}"))
            else:
                typer.echo(str(problem))
        typer.echo(validate_summary(result))
    _fail(f"the manifests have problems; nothing was {'planned' if command == 'plan' else 'sent'}")


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


def _print_plan(plan: Plan, fmt: OutputFormat, no_color: bool, verbose: bool, quiet: bool) -> None:
    from reconciler.report import plan_github, plan_markdown, plan_text

    if fmt is OutputFormat.JSON:
        sys.stdout.write(plan.dumps())
    elif fmt is OutputFormat.GITHUB:
        plan_github(plan, sys.stdout)
    elif fmt is OutputFormat.MARKDOWN:
        plan_markdown(plan, sys.stdout)
    else:
        plan_text(plan, _console(no_color), verbose=verbose, quiet=quiet)


# --- validate / schema ----------------------------------------------------------------------


@app.command(cls=_Command)
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
    from reconciler.report import validate_report
    from reconciler.tasks import load_tasks

    result = load_tasks(paths)
    validate_report(result, fmt, sys.stdout, verbose=verbose and not quiet)
    raise typer.Exit(0 if result.ok else 1)


@app.command(cls=_Command)
def schema() -> None:
    """Print the manifest JSON Schema (Draft 2020-12)."""
    from reconciler.schema import schema_text

    sys.stdout.write(schema_text())


# --- plan -----------------------------------------------------------------------------------

PlanFormatOption = Annotated[
    PlanFormat,
    typer.Option("--format", "-f", help="text, json, github (annotations) or markdown."),
]


@app.command(cls=_Command)
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
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 2 when there is something to submit."),
    ] = False,
    settle: Settle = 300,
    choice: PlanFormatOption = PlanFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
) -> None:
    """Compare manifests with the state: what apply would submit. Sends nothing."""
    fmt = OutputFormat(choice)
    from reconciler.plan import make_plan

    chosen = _parse_selector(selector)
    if out is not None:
        _check_plan_out(out)
    store = _store(_state_location(state))
    with _errors_reported():
        current = store.load()
        _warn_if_missing(store)
    tasks = _load_tasks_or_exit(paths, fmt, "plan", current)
    _print_ignored(tasks, fmt, verbose and not quiet)
    _warn_if_selector_matches_nothing(tasks, chosen)
    the_plan = make_plan(
        tasks.tasks, current, now=datetime.now(UTC), settle_seconds=settle, selector=chosen
    )
    _print_plan(the_plan, fmt, no_color, verbose, quiet)
    if out is not None:
        _save_plan(the_plan, out)
        if fmt is OutputFormat.TEXT:
            typer.echo(f"Saved the plan to {out}; apply it with: reconciler apply {out}")
    raise typer.Exit(2 if detailed_exitcode and the_plan.has_changes else 0)


def _check_plan_out(out: Path) -> None:
    """Refuse a --out that cannot be written before planning, not after."""
    folder = out.parent
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        _fail(f"cannot save the plan to {out}: the folder {folder} {what}; nothing was planned")
    if out.is_dir():
        _fail(f"cannot save the plan to {out}: it is a folder; nothing was planned")


def _save_plan(the_plan: Plan, out: Path) -> None:
    try:
        out.write_text(the_plan.dumps(), encoding="utf-8")
    except OSError as error:
        _fail(f"cannot save the plan to {out}: {error.strerror or error}")


def _warn_if_selector_matches_nothing(tasks: TaskSet, chosen: dict[str, str]) -> None:
    from reconciler.plan import matches

    if chosen and not any(matches(task, chosen) for task in tasks.tasks):
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


# Set when an abort left sender threads waiting for answers: main() then exits without
# waiting for them (the interpreter would otherwise join them, for up to the read timeout).
_abandoned_senders = threading.Event()
# Set by main(): the process ends when the command returns (not so under a test runner).
_exiting_after_apply = threading.Event()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Interrupts]:
    """Ctrl-C / SIGTERM: stop sending new requests, let in-flight ones finish and be recorded.

    The second aborts: apply records the answers already received and returns within a
    second, leaving what is still in flight `pending`. The handler only sets flags, so it can
    never interrupt a journal write halfway; a third raises KeyboardInterrupt.
    """
    interrupts = _Interrupts()

    def handler(signum: int, frame: FrameType | None) -> None:
        if interrupts.abort.is_set():
            raise KeyboardInterrupt
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
            signal.signal(sig, signal.SIG_IGN if _exiting_after_apply.is_set() else old)


def _read_plan_file(path: Path) -> Plan:
    from reconciler.plan import Plan, PlanError

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        _fail(f"{path}: cannot read the plan: {error}")
    except json.JSONDecodeError as error:
        _fail(f"{path}:{error.lineno}:{error.colno}: the plan is not valid JSON: {error.msg}")
    try:
        return Plan.from_json(document)
    except PlanError as error:
        _fail(f"{path}: {error}")


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


@app.command(cls=_Command)
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
        typer.Option("--settle", min=0, help=f"{SETTLE_HELP} [default: 300]", show_default=False),
    ] = None,
    lock_timeout: LockTimeout = 60.0,
    choice: PlanFormatOption = PlanFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
) -> None:
    """Submit every task the plan creates and record each outcome in the state file."""
    fmt = OutputFormat(choice)
    from reconciler.apply import ApplyOptions, refuse_missing_state, state_for_apply
    from reconciler.client import CredentialsError, credentials_from_env
    from reconciler.plan import DEFAULT_SETTLE_SECONDS, replan_saved

    # Usage errors first: before credentials, the state or the lock are touched.
    plan_file = _plan_file_argument(paths, selector, settle)
    chosen = _parse_selector(selector)
    if not sandbox:
        endpoint = _checked_endpoint(endpoint)
    credentials = None
    if not sandbox and not dry_run:
        try:
            credentials = credentials_from_env()
        except CredentialsError as error:
            _fail(
                f"{error}: apply needs JD Cloud credentials in JDCLOUD_ACCESS_KEY and "
                "JDCLOUD_SECRET_KEY (plus JDCLOUD_SESSION_TOKEN for temporary ones). To try the "
                "whole flow without an account: reconciler apply --sandbox ..."
            )
    saved = _read_plan_file(plan_file) if plan_file is not None else None
    store = _store(_state_location(state, sandbox=sandbox), lock_timeout)
    console = _console(no_color)
    if sandbox and fmt is OutputFormat.TEXT and not quiet:
        console.print(
            f"[bold yellow]SANDBOX[/]: a local stand-in of the Live API, not JD Cloud; "
            f"state goes to {store.shown}."
        )

    def planned(current_state: State) -> Plan:
        from reconciler.plan import make_plan

        now = datetime.now(UTC)
        if saved is not None:
            return replan_saved(saved, current_state, now=now)
        tasks = _load_tasks_or_exit(paths, fmt, "apply", current_state)
        _print_ignored(tasks, fmt, verbose and not quiet)
        _warn_if_selector_matches_nothing(tasks, chosen)
        return make_plan(
            tasks.tasks,
            current_state,
            now=now,
            settle_seconds=DEFAULT_SETTLE_SECONDS if settle is None else settle,
            selector=chosen,
        )

    with _errors_reported():
        if dry_run:
            if not sandbox:
                _warn_if_missing(store)
            the_plan = planned(state_for_apply(store, sandbox=sandbox, dry_run=True))
            _print_plan(the_plan, fmt, no_color, verbose, quiet)
            if fmt is OutputFormat.TEXT:
                console.print("Dry run: nothing was sent and the state was not changed.")
            raise typer.Exit(0)
        refuse_missing_state(store, sandbox=sandbox)
        with store.lock():
            current = state_for_apply(store, sandbox=sandbox)
            the_plan = planned(current)
            if fmt is OutputFormat.TEXT:
                _print_plan(the_plan, fmt, no_color, verbose, quiet)
            options = ApplyOptions(
                credentials=credentials,
                endpoint=endpoint,
                concurrency=concurrency,
                retry_pending=retry_pending,
                sandbox=sandbox,
            )
            code = _apply_and_report(the_plan, current, store, options, fmt, console, quiet)
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
        apply_github,
        apply_hints,
        apply_json,
        apply_markdown,
        apply_summary,
        outcome_line,
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

            result = run_apply(
                the_plan,
                current,
                store,
                options,
                stop=interrupts.stop,
                abort=interrupts.abort,
                on_outcome=on_outcome,
            )
            if result.aborted:
                # Senders still wait for an answer: the process exits without them (main()).
                _abandoned_senders.set()
        sandbox = options.sandbox
        if fmt is OutputFormat.JSON:
            document = apply_json(result, the_plan, sandbox=sandbox, state_path=store.shown)
            sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        elif fmt is OutputFormat.GITHUB:
            apply_github(result, the_plan, sys.stdout, sandbox=sandbox)
        elif fmt is OutputFormat.MARKDOWN:
            apply_markdown(result, the_plan, sys.stdout, sandbox=sandbox)
        else:
            if not sending:
                console.print("Nothing to submit.")
            console.print(f"[bold]{apply_summary(result, the_plan, sandbox=sandbox)}[/]")
            for hint in apply_hints(result, the_plan, store.shown):
                console.print(f"[yellow]note[/]: {hint}", markup=True)
    return result.exit_code


# --- init -----------------------------------------------------------------------------------


@app.command(cls=_Command)
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
    store = _store(_state_location(state))
    with _errors_reported(), store.lock():
        store.create()
    typer.echo(f"Created an empty state at {store.shown}. {store.created_hint()}")


# --- state ----------------------------------------------------------------------------------

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


@state_app.command("list", cls=_Command)
def state_list(
    state: StatePath = None,
    choice: StateFormatOption = StateFormat.TEXT,
    no_color: NoColor = False,
) -> None:
    """List every task in the state file."""
    fmt = OutputFormat(choice)
    store = _store(_state_location(state))
    with _errors_reported():
        current = store.load()
    entries = sorted(current.entries.values(), key=lambda e: (e.source, e.name, e.hash))
    if fmt is OutputFormat.JSON:
        document = {
            "formatVersion": 1,
            "command": "state list",
            "state": store.shown,
            "tasks": [_entry_json(entry) for entry in entries],
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("task", "status", "name", "requestId", "updated", "source"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.hash[:12],
            entry.status.value,
            entry.name,
            entry.request_id or "-",
            entry.updated_at,
            entry.source,
        )
    console = _console(no_color)
    if entries:
        console.print(table)
    pending = sum(1 for entry in entries if entry.status.value == "pending")
    console.print(
        f"{len(entries)} tasks in {store.shown}" + (f", {pending} pending." if pending else ".")
    )


@state_app.command("show", cls=_Command)
def state_show(
    task: TaskHash,
    state: StatePath = None,
    choice: StateFormatOption = StateFormat.TEXT,
) -> None:
    """Show one task: status, requestId, and the exact request it sends."""
    fmt = OutputFormat(choice)
    store = _store(_state_location(state))
    with _errors_reported():
        entry = store.load().find(task)
    document = _entry_json(entry)
    if fmt is OutputFormat.JSON:
        wrapped = {
            "formatVersion": 1,
            "command": "state show",
            "state": store.shown,
            "task": document,
        }
        typer.echo(json.dumps(wrapped, indent=2, ensure_ascii=False))
        return
    for key in ("hash", "status", "name", "source", "requestId", "updatedAt", "submittedAt"):
        typer.echo(f"{key + ':':13} {document[key] if document[key] is not None else '-'}")
    typer.echo("request:")
    typer.echo(json.dumps(entry.request, indent=2, ensure_ascii=False, sort_keys=True))


@state_app.command("rm", cls=_Command)
def state_rm(
    task: TaskHash,
    state: StatePath = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    lock_timeout: LockTimeout = 60.0,
) -> None:
    """Forget a task. The next apply submits it again if a manifest still asks for it."""
    store = _store(_state_location(state), lock_timeout)
    with _errors_reported(), store.lock():
        current = store.load()
        entry = current.find(task)
        warning = (
            f"{entry.name} ({entry.hash[:12]}) is {entry.status.value}: once forgotten, the next "
            "apply submits it again if a manifest still asks for it."
        )
        if not yes:
            if not sys.stdin.isatty():
                _fail(f"{warning} Pass --yes to confirm.")
            typer.confirm(f"{warning} Forget it?", abort=True)
        store.write(current.without(entry.hash))
    typer.echo(f"Removed {entry.name} ({entry.hash[:12]}) from {store.shown}.")


@state_app.command("mark-submitted", cls=_Command)
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

    if not request_id.strip():
        raise typer.BadParameter("must not be empty", param_hint="'--request-id'")
    store = _store(_state_location(state), lock_timeout)
    with _errors_reported(), store.lock():
        current = store.load()
        entry = current.find(task)
        if (
            entry.status is TaskStatus.SUBMITTED
            and entry.request_id != request_id.strip()
            and not force
        ):
            _fail(
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
        )
        store.write(current.with_entries([marked]))
    typer.echo(
        f"Marked {entry.name} ({entry.hash[:12]}) submitted, requestId {request_id.strip()}."
    )


@state_app.command("migrate", cls=_Command)
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

    origin = _store(source, lock_timeout)
    destination = _store(target, lock_timeout)
    with _errors_reported():
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


# --- sandbox --------------------------------------------------------------------------------


@app.command("sandbox", cls=_Command)
def sandbox_command(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")
    ] = 8000,
    access_key: Annotated[
        str | None,
        typer.Option(
            "--access-key", help="Access key it accepts [default: a throwaway one, printed]."
        ),
    ] = None,
    secret_key: Annotated[
        str | None,
        typer.Option(
            "--secret-key", help="Secret key it verifies with [default: a throwaway one, printed]."
        ),
    ] = None,
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", min=0, help="Delay before each answer.")
    ] = 0,
    fail: Annotated[
        str | None,
        typer.Option("--fail", help="Failure statuses and rates, e.g. 503:0.2,500:0.05."),
    ] = None,
    drop_rate: Annotated[
        float,
        typer.Option(
            "--drop-rate",
            min=0.0,
            max=1.0,
            help="Share of requests read and then dropped without an answer.",
        ),
    ] = 0.0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed for latency/failures.")
    ] = None,
    journal: Annotated[
        Path | None, typer.Option("--journal", help="Append every accepted task here (JSON lines).")
    ] = None,
) -> None:
    """Run the local stand-in of the Live API (not JD Cloud) until Ctrl-C or SIGTERM."""
    from reconciler.sandbox import SandboxConfig, parse_failures, serve

    try:
        failures = parse_failures(fail or "")
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--fail'") from None
    config = SandboxConfig(
        host=host,
        port=port,
        access_key=access_key,
        secret_key=secret_key,
        latency_ms=latency_ms,
        failures=failures,
        drop_rate=drop_rate,
        seed=seed,
        journal=journal,
    )
    raise typer.Exit(serve(config))


def main() -> None:
    """Console-script entry point."""
    _exiting_after_apply.set()
    try:
        app(prog_name="reconciler")
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        code: object = 130
    except SystemExit as exit_:
        if not _abandoned_senders.is_set():
            raise
        code = exit_.code
    else:
        return
    if _abandoned_senders.is_set():
        # The state and the summary are written; the senders still waiting for an answer
        # would hold the interpreter's exit for up to the read timeout.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(130)
