"""The command line: parses arguments, calls the core, hands results to the reporters."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from reconciler import __version__
from reconciler.report import OutputFormat

app = typer.Typer(
    name="reconciler",
    help=(
        "Keep JD Cloud Live clip-recording tasks (addLiveRecordTask) declared in YAML and "
        "submit each exactly once."
    ),
    no_args_is_help=True,
    # Tracebacks with local variables could show credentials; errors are reported by us.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Paths = Annotated[
    list[str],
    typer.Argument(
        help="Manifest files or directories (walked recursively, hidden entries skipped).",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems and the summary.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Print more detail.")]
NoColor = Annotated[
    bool, typer.Option("--no-color", help="No colours (also when NO_COLOR is set).")
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


def _check_format(fmt: OutputFormat, allowed: tuple[OutputFormat, ...], command: str) -> None:
    if fmt not in allowed:
        names = ", ".join(choice.value for choice in allowed)
        raise typer.BadParameter(f"{command} supports {names}", param_hint="'--format'")


@app.command()
def validate(
    paths: Paths,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="text, json, github (annotations) or junit."),
    ] = OutputFormat.TEXT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    no_color: NoColor = False,
) -> None:
    """Check manifests against the rules; no network, no state. Exit 1 if any is invalid."""
    _check_format(
        fmt,
        (OutputFormat.TEXT, OutputFormat.JSON, OutputFormat.GITHUB, OutputFormat.JUNIT),
        "validate",
    )
    from reconciler.report import validate_report
    from reconciler.tasks import load_tasks

    result = load_tasks(paths)
    validate_report(result, fmt, sys.stdout, verbose=verbose and not quiet)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def schema() -> None:
    """Print the manifest JSON Schema (Draft 2020-12)."""
    from reconciler.schema import schema_text

    sys.stdout.write(schema_text())


def main() -> None:
    """Console-script entry point."""
    if os.environ.get("NO_COLOR"):
        os.environ.setdefault("TERM", "dumb")
    app(prog_name="reconciler")
