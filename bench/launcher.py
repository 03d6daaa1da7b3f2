"""Start one command, wait for it, and report its own wall time and peak memory as JSON.

    python -I -S launcher.py REPORT.json COMMAND [ARG...]

Why a launcher: Linux carries a process's peak-RSS mark across exec, so a child started by a
large process (the bench holds whole states in memory) reports at least the size of its parent
in ru_maxrss. This launcher is small (no site, no imports beyond the standard library's core),
so the figure os.wait4 reads for its child is the child's own. Its own start-up is not timed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    report, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    with open(report, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "seconds": seconds,
                "maxRssKiB": usage.ru_maxrss,  # KiB on Linux
                "returncode": os.waitstatus_to_exitcode(status),
            },
            handle,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
