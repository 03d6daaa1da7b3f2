"""Manifest loading: YAML files and directories into documents that remember where each value came from."""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import BaseResolver

from reconciler.problems import Location, Problem, field_path

MANIFEST_SUFFIXES = (".yaml", ".yml")
# A directory may hold YAML that is not manifests (CI workflows, deliberately broken examples);
# patterns in this file, one per line, leave such paths out of a directory walk.
IGNORE_FILE = ".reconcilerignore"
# A manifest is well under a kilobyte; 5 MiB holds thousands of them. Anything bigger is a mistake
# (a video, a dump) and is refused before it is read.
MAX_FILE_BYTES = 5 * 1024 * 1024
# Bounds that make alias bombs ("billion laughs") and absurd nesting cheap to refuse: a manifest
# has about 30 values and is 4 levels deep.
MAX_VALUES_PER_DOCUMENT = 10_000
MAX_DEPTH = 32

DocPath = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema: only null, true/false, numbers; everything else stays text.

    PyYAML's default (YAML 1.1) turns `yes`/`on` into booleans and `2026-11-20T19:00:00Z`
    into a datetime; a manifest's strings must stay exactly as written.
    """


_CoreResolver.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreResolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_CoreResolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)

_Parser: Any
try:  # libyaml's parser is several times faster than PyYAML's own
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - exercised only where libyaml is missing
    _Parser = None

if _Parser is not None:

    class _EventParser(_Parser, _CoreResolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _CoreResolver.__init__(self)

else:  # pragma: no cover - exercised only where libyaml is missing

    class _EventParser(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _CoreResolver
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _CoreResolver.__init__(self)


WITH_LIBYAML = _Parser is not None


@dataclass(frozen=True)
class Manifest:
    """One YAML document: its value, and where in the file each value and key starts."""

    doc: Any
    location: Location
    index: int = 0
    values: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict, repr=False)
    keys: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def file(self) -> str:
        return self.location.file

    def where(self, path: DocPath, *, key: bool = False) -> Location:
        """Where the value at `path` starts (its key, with key=True), or its nearest ancestor."""
        probe = tuple(path)
        while probe:
            spot = (self.keys if key else self.values).get(probe) or self.values.get(probe)
            if spot is not None:
                return Location(self.location.file, *spot)
            probe = probe[:-1]
        return self.location

    def problem(self, path: DocPath, message: str, *, key: bool = False) -> Problem:
        return Problem(self.where(path, key=key), field_path(path), message)


@dataclass(frozen=True)
class FileResult:
    """What one file held: its manifests, or the problems that stopped them being read."""

    file: str
    manifests: list[Manifest]
    problems: list[Problem]
    read: bool = True  # False for a path that could not be expanded into files


class _DocumentError(Exception):
    def __init__(
        self, line: int, column: int, path: DocPath, message: str, *, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.line, self.column, self.path, self.message = line, column, path, message
        self.fatal = fatal


def find_manifest_files(paths: Sequence[str]) -> tuple[list[str], list[Problem]]:
    """Expand files and directories into manifest files: recursive, sorted, hidden entries skipped."""
    files: list[str] = []
    problems: list[Problem] = []
    for given in paths:
        if os.path.isdir(given):
            found_before = len(files)
            _walk(given, frozenset({os.path.realpath(given)}), (), files, problems)
            if len(files) == found_before:
                problems.append(
                    Problem(
                        Location(given),
                        "",
                        "directory holds no manifests (no .yaml or .yml files, hidden ones skipped)",
                    )
                )
        elif os.path.isfile(given):
            files.append(given)
        elif os.path.exists(given):
            problems.append(
                Problem(Location(given), "", "not a regular file or directory (a device or pipe?)")
            )
        elif os.path.lexists(given):
            problems.append(Problem(Location(given), "", "broken symbolic link"))
        else:
            problems.append(Problem(Location(given), "", "no such file or directory"))
    return _once_each(files), problems


def _once_each(files: list[str]) -> list[str]:
    """A file given twice (or given and inside a given folder, or linked) is read once."""
    seen: set[str] = set()
    unique = []
    for path in files:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def _walk(
    directory: str,
    ancestors: frozenset[str],
    ignores: tuple[tuple[str, str], ...],
    files: list[str],
    problems: list[Problem],
) -> None:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        problems.append(Problem(Location(directory), "", f"cannot read directory: {exc.strerror}"))
        return
    if any(entry.name == IGNORE_FILE for entry in entries):
        ignores += tuple((directory, pattern) for pattern in _ignore_patterns(directory))
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = os.path.join(directory, entry.name)
        is_dir = entry.is_dir()
        if _ignored(path, is_dir, ignores):
            continue
        if is_dir:
            real = os.path.realpath(path)
            if real in ancestors:
                problems.append(
                    Problem(
                        Location(path),
                        "",
                        f"directory symlink loop: it leads back to {real}; not followed",
                    )
                )
                continue
            _walk(path, ancestors | {real}, ignores, files, problems)
        elif entry.is_file():
            if entry.name.lower().endswith(MANIFEST_SUFFIXES):
                files.append(path)
        elif entry.is_symlink() and entry.name.lower().endswith(MANIFEST_SUFFIXES):
            problems.append(Problem(Location(path), "", "broken symbolic link"))


def _ignore_patterns(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, IGNORE_FILE), encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str, is_dir: bool, ignores: tuple[tuple[str, str], ...]) -> bool:
    """gitignore-style, simplified (no `!`, no `**`).

    `name` or `*.yml` matches at any depth; a pattern with a `/` inside or at the start
    (`/top.yaml`, `sub/path/*.yaml`) matches from the ignore file's folder, one path segment per
    `/` (`*` never crosses a `/`); a trailing `/` matches folders only.
    """
    for base, pattern in ignores:
        if pattern.endswith("/") and not is_dir:
            continue
        anchored = "/" in pattern.rstrip("/")
        pattern = pattern.strip("/")
        if not anchored:
            if fnmatch.fnmatchcase(os.path.basename(path), pattern):
                return True
            continue
        segments = os.path.relpath(path, base).replace(os.sep, "/").split("/")
        wanted = pattern.split("/")
        if len(segments) == len(wanted) and all(
            fnmatch.fnmatchcase(segment, want)
            for segment, want in zip(segments, wanted, strict=True)
        ):
            return True
    return False


def iter_files(paths: Sequence[str]) -> Iterator[FileResult]:
    """Load every manifest file under `paths`, one file at a time (memory stays flat)."""
    files, problems = find_manifest_files(paths)
    for problem in problems:
        yield FileResult(problem.file, [], [problem], read=False)
    for path in files:
        yield load_file(path)


def load_manifests(paths: Sequence[str]) -> tuple[list[Manifest], list[Problem]]:
    """All manifests under `paths` and every problem met while reading them."""
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for result in iter_files(paths):
        manifests.extend(result.manifests)
        problems.extend(result.problems)
    return manifests, problems


def load_file(path: str) -> FileResult:
    """Read one file: refuse what is not YAML text, then parse every document in it."""
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            return _refused(
                path, f"file is {size / 1048576:.1f} MiB; manifest files over 5 MiB are refused"
            )
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return _refused(path, f"cannot read file: {exc.strerror}")
    text, problem = decode_text(path, data)
    if problem is not None:
        return FileResult(path, [], [problem])
    return parse_text(path, text)


def decode_text(path: str, data: bytes) -> tuple[str, Problem | None]:
    """UTF-8 text with any byte-order mark removed, or the reason the bytes are not that."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "", Problem(
            Location(path),
            "",
            "UTF-16 text (as Windows PowerShell's > writes); save the file as UTF-8",
        )
    if b"\x00" in data:
        return "", Problem(
            _byte_location(path, data, data.index(b"\x00")),
            "",
            "binary file (it contains NUL bytes); a manifest must be YAML text",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        return "", Problem(
            _byte_location(path, data, exc.start),
            "",
            f"not UTF-8 text (byte 0x{bad} is invalid here); save the file as UTF-8",
        )
    return text.removeprefix("\ufeff"), None


def _byte_location(path: str, data: bytes, offset: int) -> Location:
    line_start = data.rfind(b"\n", 0, offset) + 1
    # Columns count characters, as editors do, not bytes.
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Location(path, data.count(b"\n", 0, offset) + 1, column)


def _refused(path: str, message: str) -> FileResult:
    return FileResult(path, [], [Problem(Location(path), "", message)])


def parse_text(path: str, text: str) -> FileResult:
    """Parse every YAML document of one file into Manifests (or problems, with positions)."""
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    parser: Any = None
    try:
        parser = _EventParser(text)
        parser.get_event()  # StreamStart
        index = 0
        while not parser.check_event(StreamEndEvent):
            parser.get_event()  # DocumentStart
            builder = _Builder(parser)
            manifest = None
            try:
                manifest = builder.document(path, index)
            except _DocumentError as exc:
                problems.append(
                    Problem(Location(path, exc.line, exc.column), field_path(exc.path), exc.message)
                )
                if exc.fatal:
                    break  # too big or too deep: reading on would cost what the limit saves
                while not parser.check_event(DocumentEndEvent):
                    parser.get_event()  # skip the rest of this document, then read the next
            parser.get_event()  # DocumentEnd
            if manifest is not None:
                manifests.append(manifest)
            index += 1
    except yaml.reader.ReaderError as exc:
        problems.append(_reader_problem(path, text, exc))
    except yaml.MarkedYAMLError as exc:
        problems.append(_yaml_problem(path, text, exc))
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above is marked
        problems.append(Problem(Location(path), "", f"invalid YAML: {exc}"))
    finally:
        if parser is not None:
            parser.dispose()
    if not manifests and not problems:
        problems.append(
            Problem(Location(path), "", "file holds no manifest (it is empty or only comments)")
        )
    return FileResult(path, manifests, problems)


def _offset_location(path: str, text: str, offset: int) -> Location:
    line_start = text.rfind("\n", 0, offset) + 1
    return Location(path, text.count("\n", 0, offset) + 1, offset - line_start + 1)


def _reader_problem(path: str, text: str, exc: yaml.reader.ReaderError) -> Problem:
    # Both parsers report the character's offset in the text (libyaml only that).
    offset = min(max(exc.position, 0), len(text))
    character = text[offset] if offset < len(text) else ""
    code = f"U+{ord(character):04X}" if character else "a character"
    return Problem(
        _offset_location(path, text, offset),
        "",
        f"invalid YAML: control character {code} is not allowed; remove it (quote-escaped "
        'forms such as "\\u0007" are fine)',
    )


def _yaml_problem(path: str, text: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
    context = exc.context or ""
    started = exc.context_mark
    here = (mark.line, mark.column) if mark else None
    if context and started is not None and (started.line, started.column) != here:
        line, column = started.line + 1, started.column + 1
        context += f" (started at line {line}, column {column})"
    message = " ".join(part for part in (context, exc.problem) if part)
    if mark is not None and _tab_near(text, mark.line, mark.column):
        message += " (YAML does not allow tabs for indentation; use spaces)"
    return Problem(where, "", f"invalid YAML: {message}")


def _tab_near(text: str, line: int, column: int) -> bool:
    """Whether a parse error sits on (or just after) a tab: libyaml's message never says so."""
    lines = text.split("\n")
    if line >= len(lines):
        return False
    row = lines[line]
    return "\t" in row[: column + 1] or (row[:column].strip() == "" and "\t" in row)


def _mark(event: Any) -> tuple[int, int]:
    return event.start_mark.line + 1, event.start_mark.column + 1


class _Builder:
    """Builds one document's values straight from parse events, recording each value's position.

    Working from events (not a composed node tree) means a document is refused as soon as it
    holds too many values or nests too deep, before it costs memory; aliases are followed, and
    re-using one counts all of its values again, so an alias bomb stops early too.
    """

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.values: dict[DocPath, tuple[int, int]] = {}
        self.keys: dict[DocPath, tuple[int, int]] = {}
        self.anchors: dict[str, tuple[Any, int]] = {}  # name -> (value, how many values)
        self.count = 0

    def document(self, path: str, index: int) -> Manifest | None:
        start = self.parser.peek_event()
        line, column = _mark(start)
        doc = self.value((), 0)
        if doc is None:  # an empty document, e.g. a trailing `---`
            return None
        if not isinstance(doc, dict):
            kind = "a list" if isinstance(doc, list) else f"a single value ({doc!r})"
            raise _DocumentError(
                line,
                column,
                (),
                "a manifest must be a mapping with apiVersion, kind, metadata and spec; "
                f"this document is {kind}",
            )
        return Manifest(doc, Location(path, line, column), index, self.values, self.keys)

    def _spend(self, amount: int, line: int, column: int, path: DocPath) -> None:
        self.count += amount
        if self.count > MAX_VALUES_PER_DOCUMENT:
            raise _DocumentError(
                line,
                column,
                (),
                f"document holds more than {MAX_VALUES_PER_DOCUMENT} values (counting what "
                "aliases repeat); a manifest has about 30: refused",
                fatal=True,
            )

    def value(self, path: DocPath, depth: int) -> Any:
        event = self.parser.get_event()
        line, column = _mark(event)
        if depth > MAX_DEPTH:
            raise _DocumentError(
                line,
                column,
                (),
                f"nesting is too deep (a manifest needs at most {MAX_DEPTH})",
                fatal=True,
            )
        self.values.setdefault(path, (line, column))
        if isinstance(event, AliasEvent):
            if event.anchor not in self.anchors:  # an alias inside its own anchor: a loop
                raise _DocumentError(
                    line,
                    column,
                    path,
                    f"alias *{event.anchor} refers to a value that contains it (a loop); refused",
                )
            value, size = self.anchors[event.anchor]
            self._spend(size, line, column, path)
            return copy.deepcopy(value) if size > 1 else value
        before = self.count
        self._spend(1, line, column, path)
        if isinstance(event, ScalarEvent):
            value = self._scalar(event, path)
        elif isinstance(event, SequenceStartEvent):
            self._check_tag(event, _SEQ, path)
            value = []
            while not self.parser.check_event(SequenceEndEvent):
                value.append(self.value((*path, len(value)), depth + 1))
            self.parser.get_event()
        elif isinstance(event, MappingStartEvent):
            self._check_tag(event, _MAP, path)
            value = self._mapping(path, depth)
        else:  # pragma: no cover - the parser yields only these inside a document
            raise _DocumentError(line, column, path, "unexpected YAML structure")
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, self.count - before)
        return value

    def _mapping(self, path: DocPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        while not self.parser.check_event(MappingEndEvent):
            key_event = self.parser.peek_event()
            line, column = _mark(key_event)
            if not isinstance(key_event, ScalarEvent):
                raise _DocumentError(
                    line, column, path, "a key must be text, not a list or mapping"
                )
            self.parser.get_event()
            self._spend(1, line, column, path)
            key = self._scalar(key_event, path)
            if not isinstance(key, str):
                raise _DocumentError(
                    line, column, path, "a key must be text (quote it if it looks like a number)"
                )
            if key == "<<":
                raise _DocumentError(
                    line,
                    column,
                    (*path, key),
                    "YAML merge keys (<<) are not supported; write the fields out",
                )
            if key in first_seen:
                raise _DocumentError(
                    line,
                    column,
                    (*path, key),
                    f"duplicate key '{key}' (first given on line {first_seen[key]}); "
                    "a key may appear once",
                )
            first_seen[key] = line
            self.keys[(*path, key)] = (line, column)
            result[key] = self.value((*path, key), depth + 1)
        self.parser.get_event()
        return result

    def _check_tag(self, event: Any, expected: str, path: DocPath) -> None:
        tag = event.tag
        if tag is None or tag == "!" or tag == expected:
            return
        line, column = _mark(event)
        raise _DocumentError(line, column, path, f"unsupported YAML tag {tag}; write plain values")

    def _scalar(self, event: ScalarEvent, path: DocPath) -> Any:
        tag, value = event.tag, event.value
        if tag is None or tag == "!":
            tag = self.parser.resolve(ScalarNode, value, event.implicit)
        if tag == _STR:
            return value
        if tag == _NULL and value in ("", "~", "null", "Null", "NULL"):
            return None
        if tag == _BOOL and value.lower() in ("true", "false"):
            return value.lower() == "true"
        try:
            if tag == _INT:
                if value[:2] in ("0o", "0x"):
                    return int(value[2:], 8 if value[1] == "o" else 16)
                return int(value, 10)
            if tag == _FLOAT:
                special = value.lower().lstrip("+")
                if special in (".inf", "-.inf", ".nan"):
                    return float(special.replace(".", ""))
                return float(value)
        except ValueError:
            if not event.implicit[0] or event.tag:  # an explicit !!int/!!float on other text
                pass
            else:  # a plain number too long to read (Python refuses over 4300 digits)
                line, column = _mark(event)
                raise _DocumentError(
                    line,
                    column,
                    path,
                    "a number too long to read; if it is text, put it in quotes",
                ) from None
        line, column = _mark(event)
        raise _DocumentError(
            line, column, path, f"unsupported YAML tag {tag} on {value!r}; write plain values"
        )
