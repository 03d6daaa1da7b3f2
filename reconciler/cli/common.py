"""What every command group shares: the Typer apps, the common options, and the plumbing
for errors, consoles and the state's location."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import tzinfo
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core

from reconciler import __version__
from reconciler.text import json_text

if TYPE_CHECKING:
    from rich.console import Console

    from reconciler.state import StateBackend

DEFAULT_STATE = "reconciler-state.json"
SANDBOX_STATE = "reconciler-state.sandbox.json"


class Command(typer.core.TyperCommand):
    """Usage lines that show an argument's metavar as written (`PATH...`), where Typer would
    wrap a required one in braces (`{PATH...}`); and, for a command run with `--format json`,
    a failure document on stdout for a usage error raised once the arguments are parsed."""

    def invoke(self, ctx: Any) -> Any:
        json_failures.command, json_failures.printed = None, False
        try:
            return super().invoke(ctx)
        except typer.BadParameter as error:  # every usage error the commands raise
            json_failures.report(error.format_message(), error.exit_code)
            raise
        finally:
            json_failures.command = None

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        # A usage error found while parsing (a value out of range, an unknown option) comes
        # before the command could say it prints JSON: the arguments say so instead.
        wants_json = _asks_for_json(args) and self._prints_json()  # parsing consumes `args`
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as error:
            if wants_json:
                group = parent.info_name if parent is not None and parent.parent else None
                name = " ".join(part for part in (group, info_name) if part)
                usage: Any = error
                print_json(failure_document(name, usage.format_message(), usage.exit_code))
            raise

    def _prints_json(self) -> bool:
        return any(
            "--format" in param.opts and "json" in getattr(param.type, "choices", ())
            for param in self.params
        )

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument) and param.metavar:
                pieces.append(param.metavar)
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


# Click's UsageError, the base of every parse-time error: Typer may vendor its own Click
# (typer._click), so it is reached through the class Typer exports rather than imported.
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _asks_for_json(args: Sequence[str]) -> bool:
    """Whether raw arguments ask for `--format json` (`-f json`, `--format=json`, `-fjson`)."""
    for at, arg in enumerate(args):
        if arg == "--":
            return False
        if arg in ("--format", "-f") and args[at + 1 : at + 2] == ["json"]:
            return True
        if arg in ("--format=json", "-fjson"):
            return True
    return False


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


def settle_in_range(value: int | None) -> int | None:
    """`--settle` up to the longest wait a plan can compute with (plan.MAX_SETTLE_SECONDS):
    beyond it a clip's ready time leaves the calendar, so it is a usage error, not a crash."""
    from reconciler.plan import MAX_SETTLE_SECONDS

    if value is not None and value > MAX_SETTLE_SECONDS:
        raise typer.BadParameter(
            f"{value} is more than the longest settle time, {MAX_SETTLE_SECONDS} seconds "
            "(about ten years)"
        )
    return value


Settle = Annotated[int, typer.Option("--settle", min=0, help=SETTLE_HELP, callback=settle_in_range)]


def finite_seconds(value: float) -> float:
    """A number of seconds to wait: `nan` and `inf` pass `min=0` and then break the lock's
    timeout, so they are usage errors here."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number of seconds (give one, like 60)")
    return value


LockTimeout = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        min=0,
        callback=finite_seconds,
        help="Seconds to wait for another apply's lock.",
    ),
]


def _zone(value: str | tzinfo) -> tzinfo:
    """`--timezone`'s value: an IANA zone, else a usage error (exit 2) naming the option."""
    if isinstance(value, tzinfo):  # the default (the zone database stays unread)
        return value
    from reconciler.timezones import ZoneError, display_zone

    try:
        return display_zone(value)
    except ZoneError as error:
        raise typer.BadParameter(
            str(error), param_hint="'--timezone' (or RECONCILER_TIMEZONE)"
        ) from None


Timezone = Annotated[
    tzinfo,
    typer.Option(
        "--timezone",
        envvar="RECONCILER_TIMEZONE",
        parser=_zone,
        metavar="ZONE",
        help="Show times in this IANA zone (Asia/Shanghai, America/New_York) [default: UTC]; "
        "JSON output stays in UTC.",
        show_default=False,
    ),
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


class JsonFailures:
    """Every command run with `--format json` prints exactly one JSON document on stdout
    (DESIGN §4), failures included: a CI step piping it to `jq` never reads an empty stream.

    A command whose output is JSON says so first (`expect`); its documents go out through
    `print_json` (or are marked printed); a failure (`fail`, or a usage error raised after
    parsing, see Command.invoke) with no document out yet prints the failure document."""

    def __init__(self) -> None:
        self.command: str | None = None
        self.printed = False

    def expect(self, command: str, json_output: bool) -> None:
        self.command = command if json_output else None

    def report(self, message: str, code: int) -> None:
        if self.command is None or self.printed:
            return
        print_json(failure_document(self.command, message, code))


json_failures = JsonFailures()


def failure_document(command: str, message: str, code: int) -> dict[str, Any]:
    """The document a command run with `--format json` prints when it fails (`failure` in
    schemas/output.schema.json)."""
    return {
        "formatVersion": 1,
        "command": command,
        "ok": False,
        "error": {"message": message, "exitCode": code},
    }


def print_json(document: Any) -> None:
    """A command's one JSON document, on stdout."""
    print_json_text(json_text(document))


def print_json_text(text: str) -> None:
    """A command's one JSON document, already written as text (json_text's layout), on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    json_failures.printed = True


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    json_failures.report(message, code)
    raise typer.Exit(code)


def make_console(no_color: bool, *, stderr: bool = False) -> Console:
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


def state_location(given: str | None, *, sandbox: bool = False) -> str:
    # An empty value is a mistake (an unset CI variable, a quoting slip), never "the default":
    # the default may be another state than the one meant.
    if given is not None:
        if not given.strip():
            raise typer.BadParameter(
                "is empty: name a state file or a postgresql:// URI", param_hint="'--state'"
            )
        return given
    if sandbox:
        # A sandbox run never reads $RECONCILER_STATE: it must not mark real tasks submitted.
        return SANDBOX_STATE
    from_env = os.environ.get("RECONCILER_STATE")
    if from_env is not None:
        if not from_env.strip():
            raise typer.BadParameter(
                "is set but empty: name a state file or a postgresql:// URI, or unset it "
                f"for the default ({DEFAULT_STATE})",
                param_hint="RECONCILER_STATE",
            )
        return from_env
    return DEFAULT_STATE


def state_origin(given: str | None, *, sandbox: bool = False) -> str:
    """Where `state_location(given, sandbox=sandbox)` took the state from, for messages."""
    if given:
        return "given with --state"
    if sandbox:
        return "apply --sandbox's own state, used without --state"
    if os.environ.get("RECONCILER_STATE"):
        return "from $RECONCILER_STATE"
    return "the default state file"


def open_store(location: str, lock_timeout: float = 60.0) -> StateBackend:
    """The state `location` names (a file path or a postgresql:// URI); exit 2 if it names none."""
    from reconciler.state import StateError, StateLocationError, open_state

    try:
        return open_state(location, lock_timeout=lock_timeout)
    except StateLocationError as error:
        raise typer.BadParameter(str(error), param_hint="'--state' (or RECONCILER_STATE)") from None
    except StateError as error:
        fail(str(error))


def warn_if_missing(store: StateBackend) -> None:
    if not store.exists():
        typer.echo(
            f"warning: there is no state at {store.shown}, so every clip is planned as `create`. "
            "If these manifests were applied before, this is the wrong directory or the state "
            "was not checked out (apply would refuse to run); if they never were, create the "
            "state with `reconciler init`.",
            err=True,
        )


def checked_endpoint(endpoint: str | None) -> str | None:
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
def errors_reported() -> Iterator[None]:
    """Known failures become `error: ...` and exit 1, never a traceback."""
    try:
        yield
    except Exception as error:
        if not isinstance(error, _known_errors()):
            raise
        fail(str(error))


def _known_errors() -> tuple[type[Exception], ...]:
    """StateError, and PlanError when the planner is loaded (only then can one be raised):
    commands that never plan (verify, receive) do not load the planner for it."""
    from reconciler.state import StateError

    plan = sys.modules.get("reconciler.plan")
    return (StateError,) if plan is None else (StateError, plan.PlanError)


# Set when an abort left sender threads waiting for answers: main() then exits without
# waiting for them (the interpreter would otherwise join them, for up to the read timeout).
abandoned_senders = threading.Event()
# Set by main(): the process ends when the command returns (not so under a test runner).
exiting_after_apply = threading.Event()
