"""reconciler: declarative, exactly-once submission of JD Cloud Live clip-recording tasks."""

# First, when this is the command line: from here on a signal ends it with exit 130 and one
# line, never a traceback from the middle of an import (reconciler/interrupts.py).
from reconciler import interrupts as _interrupts

if _interrupts.started_as_command_line():
    _interrupts.install()

__version__ = "0.1.0"
