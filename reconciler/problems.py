"""Problem: one thing wrong with the input, and exactly where it is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Location:
    """A place in a file; line and column count from 1, as editors show them."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, order=True, slots=True)
class Problem:
    """An error about the input, pointing at a file position and (when known) a field path."""

    location: Location
    field: str
    message: str

    @property
    def file(self) -> str:
        return self.location.file

    @property
    def line(self) -> int:
        return self.location.line

    @property
    def column(self) -> int:
        return self.location.column

    def __str__(self) -> str:
        if self.field:
            return f"{self.location}: {self.field}: {self.message}"
        return f"{self.location}: {self.message}"


def field_path(path: tuple[str | int, ...]) -> str:
    """Render a path inside a document the way users write it: `spec.recordTimes[0].startTime`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out
