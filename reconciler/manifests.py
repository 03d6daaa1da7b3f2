"""Manifest loading: YAML files and directories into documents that remember where each value came from."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
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

try:  # the C parser is several times faster
    from yaml import CParser as _Parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised only where libyaml is missing
    _Parser = None

if _Parser is not None:

    class _Composer(_Parser, _CoreResolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _CoreResolver.__init__(self)

else:  # pragma: no cover - exercised only where libyaml is missing

    class _Composer(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        _CoreResolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _CoreResolver.__init__(self)


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
    def __init__(self, line: int, column: int, path: DocPath, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.path, self.message = line, column, path, message


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
        elif os.path.lexists(given):
            problems.append(Problem(Location(given), "", "broken symbolic link"))
        else:
            problems.append(Problem(Location(given), "", "no such file or directory"))
    return files, problems


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
            if entry.name.endswith(MANIFEST_SUFFIXES):
                files.append(path)
        elif entry.is_symlink() and entry.name.endswith(MANIFEST_SUFFIXES):
            problems.append(Problem(Location(path), "", "broken symbolic link"))


def _ignore_patterns(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, IGNORE_FILE), encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str, is_dir: bool, ignores: tuple[tuple[str, str], ...]) -> bool:
    """gitignore-style, simplified: `name`, `*.yml`, `dir/`, `sub/path/*.yaml` (no `!`)."""
    for base, pattern in ignores:
        if pattern.endswith("/") and not is_dir:
            continue
        pattern = pattern.strip("/")
        relative = os.path.relpath(path, base).replace(os.sep, "/")
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern):
                return True
        elif fnmatch.fnmatchcase(os.path.basename(path), pattern):
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
    return Location(path, data.count(b"\n", 0, offset) + 1, offset - line_start + 1)


def _refused(path: str, message: str) -> FileResult:
    return FileResult(path, [], [Problem(Location(path), "", message)])


def parse_text(path: str, text: str) -> FileResult:
    """Parse every YAML document of one file into Manifests (or problems, with positions)."""
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    composer = _Composer(text)
    index = 0
    try:
        while composer.check_node():
            node = composer.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            try:
                manifest = _to_manifest(path, node, index)
            except _DocumentError as exc:
                problems.append(
                    Problem(Location(path, exc.line, exc.column), field_path(exc.path), exc.message)
                )
            else:
                if manifest is not None:
                    manifests.append(manifest)
            index += 1
    except yaml.MarkedYAMLError as exc:
        problems.append(_yaml_problem(path, exc))
    except yaml.YAMLError as exc:
        problems.append(Problem(Location(path), "", f"invalid YAML: {exc}"))
    except RecursionError:
        problems.append(
            Problem(
                Location(path), "", f"nesting is too deep (a manifest needs at most {MAX_DEPTH})"
            )
        )
    finally:
        composer.dispose()
    if not manifests and not problems:
        problems.append(
            Problem(Location(path), "", "file holds no manifest (it is empty or only comments)")
        )
    return FileResult(path, manifests, problems)


def _yaml_problem(path: str, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
    context = exc.context or ""
    if context and exc.context_mark is not None and exc.context_mark is not mark:
        context += (
            f" (started at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        )
    message = " ".join(part for part in (context, exc.problem) if part)
    if "'\\t'" in message or "\\t" in repr(exc.problem):
        message += " (YAML does not allow tabs for indentation; use spaces)"
    return Problem(where, "", f"invalid YAML: {message}")


def _to_manifest(path: str, node: Node, index: int) -> Manifest | None:
    builder = _Builder()
    doc = builder.build(node, (), 0)
    start = Location(path, node.start_mark.line + 1, node.start_mark.column + 1)
    if doc is None:  # an empty document, e.g. a trailing `---`
        return None
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else f"a single value ({doc!r})"
        raise _DocumentError(
            start.line,
            start.column,
            (),
            f"a manifest must be a mapping with apiVersion, kind, metadata and spec; this document is {kind}",
        )
    return Manifest(doc, start, index, builder.values, builder.keys)


class _Builder:
    """Turns a composed node tree into plain values, recording each value's position.

    Aliases are followed, but every value built counts against a budget, so an alias bomb stops
    after a few thousand values instead of expanding to billions.
    """

    def __init__(self) -> None:
        self.values: dict[DocPath, tuple[int, int]] = {}
        self.keys: dict[DocPath, tuple[int, int]] = {}
        self.budget = MAX_VALUES_PER_DOCUMENT

    def build(self, node: Node, path: DocPath, depth: int) -> Any:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        self.budget -= 1
        if self.budget < 0:
            raise _DocumentError(
                line,
                column,
                path,
                f"document expands to more than {MAX_VALUES_PER_DOCUMENT} values "
                "(aliases repeating aliases?); refused",
            )
        if depth > MAX_DEPTH:
            raise _DocumentError(
                line, column, path, f"nesting is too deep (a manifest needs at most {MAX_DEPTH})"
            )
        self.values.setdefault(path, (line, column))
        if isinstance(node, ScalarNode):
            return _scalar(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        raise _DocumentError(line, column, path, "unsupported YAML node")  # pragma: no cover

    def _mapping(self, node: MappingNode, path: DocPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            key = _scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
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
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result


def _scalar(node: ScalarNode, path: DocPath) -> Any:
    tag, value = node.tag, node.value
    if tag == _STR:
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return value.lower() == "true"
    try:
        if tag == _INT:
            if value[:2] in ("0o", "0x"):
                return int(value[2:], 8 if value[1] == "o" else 16)
            return int(value, 10)
        if tag == _FLOAT:
            return float(value)
    except ValueError:
        pass  # an explicit !!int or !!float on text that is not one
    raise _DocumentError(
        node.start_mark.line + 1,
        node.start_mark.column + 1,
        path,
        f"unsupported YAML tag {tag} on {value!r}; write plain values",
    )
