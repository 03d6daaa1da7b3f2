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
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed for the faults.")] = None,
    journal: Annotated[
        Path | None, typer.Option("--journal", help="Append every accepted task here (JSON lines).")
    ] = None,
    record_after: Annotated[
        float | None,
        typer.Option(
            "--record-after",
            min=0.0,
            metavar="SECONDS",
            help="Record each accepted task this long after accepting it, and post its record "
            "callbacks (one per format) to the domain's notify URL [default: never record].",
        ),
    ] = None,
    notify_url: Annotated[
        str | None,
        typer.Option(
            "--notify-url",
            metavar="URL",
            help="Where callbacks go for a domain with no notify URL set through the API "
            "(http://...) [default: nowhere].",
        ),
    ] = None,
    record_fail_rate: Annotated[
        float,
        typer.Option(
            "--record-fail-rate",
            min=0.0,
            max=1.0,
            help="Share of tasks never recorded (no callback).",
        ),
    ] = 0.0,
    callback_duplicates: Annotated[
        float,
        typer.Option(
            "--callback-duplicates", min=0.0, max=1.0, help="Share of callbacks posted twice."
        ),
    ] = 0.0,
    callback_delay: Annotated[
        str | None,
        typer.Option(
            "--callback-delay",
            metavar="SECONDS|LOW-HIGH",
            help="Extra delay before each callback is posted (a range: drawn per callback).",
        ),
    ] = None,
    callback_without_id: Annotated[
        float,
        typer.Option(
            "--callback-without-id",
            min=0.0,
            max=1.0,
            help="Share of callbacks that leave taskExternalId out.",
        ),
    ] = 0.0,
    callback_fail_status: Annotated[
        float,
        typer.Option(
            "--callback-fail-status",
            min=0.0,
            max=1.0,
            help='Share of callbacks that say status "failed".',
        ),
    ] = 0.0,
    callback_retries: Annotated[
        int,
        typer.Option(
            "--callback-retries",
            min=0,
            help="Times a failed callback post is tried again (with backoff: 1 s, 2 s, 4 s...).",
        ),
    ] = 3,
    storage_endpoint: Annotated[
        str | None,
        typer.Option(
            "--storage-endpoint",
            metavar="URL",
            help="An S3-compatible endpoint (http(s)://host[:port]) to write each recorded file "
            "into: the task's saveBucket there, path-style, before its callback; the callback's "
            "downloadUrl is then the object's URL there [default: write no file]. Needs the "
            "storage extra: pip install 'reconciler[storage]'.",
        ),
    ] = None,
    storage_access_key: Annotated[
        str | None,
        typer.Option(
            "--storage-access-key",
            help="Access key the writes are signed with [default: the sandbox's own].",
        ),
    ] = None,
    storage_secret_key: Annotated[
        str | None,
        typer.Option(
            "--storage-secret-key",
            help="Secret key the writes are signed with [default: the sandbox's own].",
        ),
    ] = None,
    storage_create_buckets: Annotated[
        bool,
        typer.Option(
            "--storage-create-buckets",
            help="Create a saveBucket that does not exist [default: a write into it fails, is "
            'counted, and its callback says "failed", as the service would].',
        ),
    ] = False,
) -> None:
    """Run the local stand-in of the Live API (not JD Cloud) until Ctrl-C or SIGTERM."""
    from reconciler.sandbox import (
        SandboxConfig,
        notify_url_problem,
        parse_delay,
        parse_failures,
        serve,
        storage_endpoint_problem,
    )

    try:
        failures = parse_failures(fail or "")
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--fail'") from None
    try:
        delay = parse_delay(callback_delay) if callback_delay is not None else (0.0, 0.0)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--callback-delay'") from None
    if notify_url is not None and (problem := notify_url_problem(notify_url)):
        raise typer.BadParameter(problem, param_hint="'--notify-url'")
    if storage_endpoint is not None and (problem := storage_endpoint_problem(storage_endpoint)):
        raise typer.BadParameter(problem, param_hint="'--storage-endpoint'")
    if (storage_access_key is None) != (storage_secret_key is None):
        missing = "--storage-secret-key" if storage_secret_key is None else "--storage-access-key"
        raise typer.BadParameter(
            f"goes with {missing}: give both, or neither to sign with the sandbox's own keys",
            param_hint="'--storage-access-key'"
            if storage_secret_key is None
            else "'--storage-secret-key'",
        )
    if storage_endpoint is None:
        _refuse_given(
            {
                "--storage-access-key": storage_access_key is not None,
                "--storage-secret-key": storage_secret_key is not None,
                "--storage-create-buckets": storage_create_buckets,
            },
            "acts on the files written: add --storage-endpoint URL to write them",
        )
    if record_after is None:
        _refuse_given(
            {
                "--notify-url": notify_url is not None,
                "--storage-endpoint": storage_endpoint is not None,
                "--record-fail-rate": record_fail_rate,
                "--callback-duplicates": callback_duplicates,
                "--callback-delay": callback_delay is not None,
                "--callback-without-id": callback_without_id,
                "--callback-fail-status": callback_fail_status,
            },
            "acts on recordings only: add --record-after SECONDS to record",
        )
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
        record_after=record_after,
        notify_url=notify_url,
        record_fail_rate=record_fail_rate,
        callback_duplicates=callback_duplicates,
        callback_delay=delay,
        callback_without_id=callback_without_id,
        callback_fail_status=callback_fail_status,
        callback_retries=callback_retries,
        storage_endpoint=storage_endpoint,
        storage_access_key=storage_access_key,
        storage_secret_key=storage_secret_key,
        storage_create_buckets=storage_create_buckets,
    )
    raise typer.Exit(serve(config))


def _refuse_given(given: dict[str, object], why: str) -> None:
    """A usage error naming the first of these options given (truthy) while it has no effect."""
    for option, value in given.items():
        if value:
            raise typer.BadParameter(why, param_hint=f"'{option}'")
