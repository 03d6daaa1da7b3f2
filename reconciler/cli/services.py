"""sandbox: the local stand-in of the Live API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from reconciler.cli.common import (
    Command,
    app,
)

if TYPE_CHECKING:
    pass


# --- sandbox --------------------------------------------------------------------------------


@app.command("sandbox", cls=Command)
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
