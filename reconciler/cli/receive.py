"""receive: the callback receiver, a long-running HTTP service beside the state (DESIGN §7a)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from reconciler.cli.common import (
    DEFAULT_STATE,
    Command,
    app,
    errors_reported,
    fail,
    finite_seconds,
    open_store,
    state_location,
)


@app.command("receive", cls=Command)
def receive_command(
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help=f"The state the callbacks go to: a file or a postgresql:// URI [default: "
            f"$RECONCILER_STATE or {DEFAULT_STATE}].",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind (loopback by default; 0.0.0.0 in a container)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")
    ] = 8080,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            min=0,
            callback=finite_seconds,
            help="Seconds a callback waits for a file state's lock (held by an apply) before "
            "it is answered 503, which makes JD Cloud try again.",
        ),
    ] = 5.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="Callbacks stored at once (threads; one database connection each).",
        ),
    ] = 8,
) -> None:
    """Take JD Cloud's record callbacks at POST /callbacks/$RECONCILER_CALLBACK_TOKEN and store
    them in the state, until Ctrl-C or SIGTERM. Logs one JSON line per callback on stderr;
    GET /healthz answers while it serves (it does not touch the state)."""
    from reconciler.receiver import (
        TOKEN_VARIABLE,
        ReceiverConfig,
        ReceiverUnavailableError,
        check_installed,
        serve,
        token_problem,
    )

    token = os.environ.get(TOKEN_VARIABLE)
    if problem := token_problem(token):
        raise typer.BadParameter(problem, param_hint=TOKEN_VARIABLE)
    assert token is not None
    location = state_location(state)
    try:
        check_installed()
    except ReceiverUnavailableError as error:
        fail(str(error))
    with open_store(location, lock_timeout) as store:
        with errors_reported():  # asking a database can fail: unreachable, a newer schema
            exists = store.exists()
        if not exists:
            fail(
                f"there is no state at {store.shown} {store.missing_reason()}; nothing was "
                "received. Start the receiver beside the state apply records to (create an "
                "empty one with `reconciler init` if these manifests were really never applied)"
            )
    config = ReceiverConfig(
        location=location,
        token=token,
        host=host,
        port=port,
        lock_timeout=lock_timeout,
        workers=workers,
    )
    raise typer.Exit(serve(config))
