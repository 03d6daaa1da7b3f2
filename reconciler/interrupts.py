"""How the command line ends on Ctrl-C or SIGTERM, at any instant: exit 130, one line on stderr.

Installed by the package's first line when it is the program (the `reconciler` console script,
`python -m reconciler`), before anything heavy is imported: Python's own handling would print a
KeyboardInterrupt traceback during the imports, and SIGTERM would kill the process (143).

- Before a command runs (the imports, the parsing), a signal ends the process at once: there
  is nothing to clean up yet. Once it has run, signals are ignored: the process only exits,
  with the command's own result (as apply does once its summary is out).
- While a command runs (`main()` wraps it in `raising()`), the first signal raises Interrupted
  in the main thread, so `finally` blocks release locks and remove temporary files; main()
  then prints the line and exits 130. A second signal while that unwinds ends the process at
  once. Commands with handling of their own (apply's two-stage stop, the sandbox) install
  their handlers over these and put them back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

__all__ = ["EXIT_CODE", "MESSAGE", "Interrupted", "announce", "exit_now", "install", "raising"]

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
MESSAGE = "Interrupted."
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The first SIGINT/SIGTERM while a command runs.

    Not a KeyboardInterrupt, which Click turns into "Aborted!" and exit 1; not an Exception,
    so no `except Exception` on the way takes it for an error.
    """


_raising = False
_announced = False


def started_as_command_line() -> bool:
    """Whether this process is the command line, not a program that imports reconciler.

    `python -m reconciler` imports the package while argv[0] is still "-m"; the console
    script's argv[0] is the script, named `reconciler`.
    """
    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.splitext(os.path.basename(first))[0] == "reconciler"


def install() -> None:
    """Handle SIGINT and SIGTERM from now on (idempotent).

    A signal a parent set to be ignored stays ignored (`nohup`, a shell's background job).
    Both are unblocked afterwards: a process started with them blocked (a parent thread that
    waits for signals itself passes its mask on) could not be stopped otherwise; a signal
    sent while they were blocked is handled now.
    """
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def announce() -> None:
    """Print the one line, once (the flag is set first: a signal arriving meanwhile must not
    print it a second time)."""
    global _announced
    if _announced:
        return
    _announced = True
    with contextlib.suppress(OSError):
        os.write(2, f"{MESSAGE}\n".encode())


def exit_now() -> NoReturn:
    """End the process: what was printed is flushed, the line is printed, exit 130."""
    for stream in (sys.stdout, sys.stderr):
        # Best effort: the signal may have come in the middle of a write to this very stream.
        with contextlib.suppress(Exception):
            stream.flush()
    announce()
    os._exit(EXIT_CODE)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _raising
    if _raising:
        _raising = False  # the next one, while this unwinds, ends the process at once
        raise Interrupted
    exit_now()


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """While the block runs, the first signal raises Interrupted; once it is left, the
    process only exits, and a signal no longer changes how (the command's result stands)."""
    global _raising
    _raising = True
    try:
        yield
    finally:
        _raising = False
        for signum in SIGNALS:
            if signal.getsignal(signum) is _on_signal:
                signal.signal(signum, signal.SIG_IGN)
