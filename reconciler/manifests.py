"""Manifest loading: YAML files and directories into documents that remember where each value came from."""

from __future__ import annotations

import copy
import difflib
import errno
import os
import re
import stat
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
# patterns in this file (gitignore syntax, read as Git reads a .gitignore) leave such paths out
# of a directory walk.
IGNORE_FILE = ".reconcilerignore"
# A manifest is well under a kilobyte; 5 MiB holds thousands of them. Anything bigger is a mistake
# (a video, a dump) and is refused before it is read.
MAX_FILE_BYTES = 5 * 1024 * 1024
# Bounds that make alias bombs ("billion laughs") and absurd nesting cheap to refuse: a manifest
# has about 30 values and is 4 levels deep.
MAX_VALUES_PER_DOCUMENT = 10_000
MAX_DEPTH = 32
# A RecordTaskSet writes many clips in one document (about 15 values each): 10,000 clips fit, and
# the 5 MiB file limit binds first. It gets the larger budget once its `kind` has been read.
# Every budget counts what aliases repeat as if it were written out (a clip that shares an
# anchor costs what it would cost written in full), so an alias bomb is refused as soon as it
# has cost what the largest set written out costs, and never more.
MAX_VALUES_PER_SET = 500_000
SET_KIND = "RecordTaskSet"
# A publish domain's record notify URL (reconciler/notify.py), read, compared and set.
NOTIFY_KIND = "RecordNotifyConfig"
# The kinds there are.
KINDS = ("RecordTask", SET_KIND, NOTIFY_KIND)
# What a clip of a set writes besides spec fields: the rest of a clip entry is merged into spec.
CLIP_OWN_KEYS = ("name", "labels")

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
    """One YAML document: its value, and where in the file each value and key starts.

    A clip of a RecordTaskSet is a Manifest too: its `doc` is the RecordTask the set stands for
    (template and clip merged), and `clip` says where each of its values is written in the set.
    """

    doc: Any
    location: Location
    index: int = 0
    values: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict, repr=False)
    keys: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict, repr=False)
    clip: Clip | None = field(default=None, repr=False)

    @property
    def file(self) -> str:
        return self.location.file

    def written(self, path: DocPath) -> DocPath:
        """The path in the file's document of the value at `path` (a clip's: in its set)."""
        return path if self.clip is None else self.clip.written(path)

    def where(self, path: DocPath, *, key: bool = False) -> Location:
        """Where the value at `path` starts (its key, with key=True), or its nearest ancestor."""
        probe = self.written(path)
        while probe:
            spot = (self.keys if key else self.values).get(probe) or self.values.get(probe)
            if spot is not None:
                return Location(self.location.file, *spot)
            probe = probe[:-1]
        return self.location

    def problem(self, path: DocPath, message: str, *, key: bool = False) -> Problem:
        return Problem(self.where(path, key=key), field_path(self.written(path)), message)


@dataclass(frozen=True, eq=False)
class ClipSet:
    """A RecordTaskSet as written, shared by the clips expanded from it."""

    manifest: Manifest
    template: frozenset[str]  # the spec fields the template writes


@dataclass(frozen=True, slots=True)
class Clip:
    """Where one clip of a set writes each value of the RecordTask it stands for."""

    set: ClipSet
    index: int  # in spec.clips
    name: str | None  # as the clip writes it (the task is named <set>-<clip>)
    fields: frozenset[str]  # the spec fields the clip writes itself
    labels: frozenset[str]  # the label keys the clip writes itself

    @property
    def entry(self) -> DocPath:
        return ("spec", "clips", self.index)

    @property
    def title(self) -> str:
        """How messages name the clip: its name, or its entry when it has none."""
        return self.name if self.name is not None else f"spec.clips[{self.index}]"

    def written(self, path: DocPath) -> DocPath:
        """Where the merged RecordTask's value at `path` is written in the set's document: the
        clip's entry, the template, or the set's metadata. A value neither writes (a missing
        field) is the clip's to write."""
        head, rest = path[:1], path[1:]
        if head == ("spec",) and rest:
            if rest[0] in self.fields or rest[0] not in self.set.template:
                return (*self.entry, *rest)
            return ("spec", "template", *rest)
        if head == ("metadata",) and rest[:1] == ("name",):
            return (*self.entry, "name", *rest[1:])
        if head == ("metadata",) and rest[:1] == ("labels",):
            if rest[1:2] and rest[1] in self.labels:
                return (*self.entry, *rest)
            return path
        if head in (("spec",), ()):
            return self.entry
        return path  # apiVersion, kind and the rest of metadata: the set's own


def expand_set(manifest: Manifest) -> list[Manifest]:
    """A RecordTaskSet's clips, each as the RecordTask manifest it stands for: the set's labels
    then the clip's, the template's spec fields then the clip's, named `<set>-<clip>`.

    Nothing is checked here (schema.py checks the set as written and every merged clip). A set
    whose clips cannot be read (a template that is no mapping, clips that are no list, no clip
    that is a mapping) stays as written, for the checks to explain.
    """
    doc = manifest.doc
    spec = doc.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    clips = spec.get("clips") if isinstance(spec, dict) else None
    if not isinstance(template, dict) or not isinstance(clips, list):
        return [manifest]
    metadata = doc.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    set_name = metadata.get("name")
    set_labels = metadata.get("labels")
    shared = ClipSet(manifest, frozenset(template))
    expanded = []
    for index, clip in enumerate(clips):
        if not isinstance(clip, dict):
            continue
        name = clip.get("name")
        own = {key: value for key, value in clip.items() if key not in CLIP_OWN_KEYS}
        labels = clip.get("labels")
        clip_metadata: dict[str, Any] = {}
        if isinstance(set_name, str) and isinstance(name, str):
            clip_metadata["name"] = f"{set_name}-{name}"
        if "labels" in metadata or "labels" in clip:
            clip_metadata["labels"] = {
                **(set_labels if isinstance(set_labels, dict) else {}),
                **(labels if isinstance(labels, dict) else {}),
            }
        merged = {key: doc[key] for key in ("apiVersion",) if key in doc}
        merged.update(kind="RecordTask", metadata=clip_metadata, spec={**template, **own})
        origin = Clip(
            shared,
            index,
            name if isinstance(name, str) else None,
            frozenset(own),
            frozenset(labels) if isinstance(labels, dict) else frozenset(),
        )
        location = manifest.where(origin.entry)
        expanded.append(
            Manifest(merged, location, manifest.index, manifest.values, manifest.keys, origin)
        )
    return expanded or [manifest]


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


@dataclass(frozen=True, slots=True)
class Ignored:
    """A path a directory walk left out, and the line of the ignore file that left it out."""

    path: str  # as walked; a directory's ends with '/'
    source: str  # the ignore file
    line: int
    pattern: str  # as written (without the trailing spaces Git drops too)

    def __str__(self) -> str:
        return f"{self.path} ({self.source}:{self.line}: {self.pattern})"


@dataclass(frozen=True)
class Found:
    """What the paths given expand to: manifest files, problems met, and what was ignored."""

    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def find_manifests(paths: Sequence[str]) -> Found:
    """Expand files and directories into manifest files: recursive, sorted, hidden entries skipped.

    A directory walk leaves out what a `.reconcilerignore` ignores (gitignore syntax; see
    _IgnoreFile). A path named on the command line is read as named: a file is read even if an
    ignore file would leave it out, and a directory is walked with the ignore files in it and
    below it (those in its parent directories are not read). So `reconciler validate
    examples/invalid` checks what `examples/.reconcilerignore` leaves out of `examples/`.
    """
    found = Found()
    for given in paths:
        try:
            mode = os.stat(given).st_mode
        except OSError:
            mode = 0
        if stat.S_ISDIR(mode):
            files_before, problems_before = len(found.files), len(found.problems)
            ignored_before = len(found.ignored)
            _walk(given, frozenset({os.path.realpath(given)}), (), found)
            if len(found.files) == files_before and len(found.problems) == problems_before:
                left_out = len(found.ignored) - ignored_before
                ignored = (
                    f"; {left_out} {'path' if left_out == 1 else 'paths'} ignored by {IGNORE_FILE}"
                    if left_out
                    else ""
                )
                found.problems.append(
                    Problem(
                        Location(given),
                        "",
                        "directory holds no manifests (no .yaml or .yml files, hidden ones "
                        f"skipped{ignored})",
                    )
                )
        elif stat.S_ISREG(mode):
            found.files.append(given)
        else:
            found.problems.append(Problem(Location(given), "", not_a_file(given)))
    found.files[:] = _once_each(found.files)
    return found


def find_manifest_files(paths: Sequence[str]) -> tuple[list[str], list[Problem]]:
    """The manifest files under `paths` and the problems met finding them (see find_manifests)."""
    found = find_manifests(paths)
    return found.files, found.problems


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def not_a_file(path: str) -> str:
    """Why `path` is no file to read, found with stat alone: a FIFO would block an open()."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (its target {_link_target(path)} does not exist)"
        return "no such file or directory"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the links lead back to each other); not read"
        if exc.errno == errno.ENOTDIR:
            return "no such file or directory (a part of the path is a file)"
        return f"cannot read: {exc.strerror}"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    if os.path.islink(path):
        return (
            f"is a symbolic link to {kind} ({os.path.realpath(path)}), not a regular file; not read"
        )
    return f"is {kind}, not a regular file; not read"


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # pragma: no cover - removed or replaced since it was seen as a link
        return "?"


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


@dataclass(frozen=True, slots=True)
class _Rule:
    line: int
    text: str  # as written, trailing spaces dropped
    include: bool  # False for a `!` pattern: it re-includes
    directories_only: bool  # written with a trailing '/'
    regex: re.Pattern[str]


@dataclass(frozen=True)
class _IgnoreFile:
    """One `.reconcilerignore`, compiled once: gitignore rules, matched the way Git matches them.

    `pathspec` turns each pattern into a regular expression (escapes, `*`, `?`, `[...]`, `**`,
    anchoring by a leading or inner `/`). Which pattern decides is Git's rule: the last one
    that matches the path itself, a directory's rules before its parent's, and nothing below
    an ignored directory is looked at (the walk does not go in). pathspec's own GitIgnoreSpec
    decides differently for directories (with `*` then `!*/`, the directories stay ignored;
    with `d/` then `!d/keep.yaml`, keep.yaml is taken although Git leaves it out), so it is
    used for the patterns only.
    """

    source: str
    rules: tuple[_Rule, ...]

    def decide(self, relative: str, is_dir: bool) -> _Rule | None:
        """The rule that decides for `relative` (to this file's folder), or None if none matches."""
        for rule in reversed(self.rules):
            if rule.directories_only and not is_dir:
                continue
            match = rule.regex.search(relative)
            # A match through the directory mark group is a match of a parent folder, which
            # the walk has decided already.
            if match is not None and not any(match.groups()):
                return rule
        return None


def _trim_trailing_spaces(line: str) -> str:
    """Git's rule: trailing spaces are dropped unless the last one is escaped with a backslash."""
    end = len(line)
    while end and line[end - 1] == " ":
        backslashes = len(line[: end - 1]) - len(line[: end - 1].rstrip("\\"))
        if backslashes % 2:
            break
        end -= 1
    return line[:end]


def _read_ignore_file(path: str, problems: list[Problem]) -> _IgnoreFile | None:
    """The compiled ignore file at `path`, or None (with a problem) if it cannot be read.

    A pattern that is invalid, or can never match, is a problem at its line; the others apply.
    """
    why_not = "cannot read the patterns, so this directory is not read"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            problems.append(
                Problem(Location(path), "", f"{_not_read(not_a_file(path))}; {why_not}")
            )
            return None
        with open(path, "rb", opener=_open_nonblocking) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(Location(path), "", f"cannot read file: {exc.strerror}; {why_not}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(Location(path), "", f"file is over 5 MiB; {why_not}"))
        return None
    text, problem = decode_text(path, data)
    if problem is not None:
        problems.append(Problem(problem.location, "", f"{problem.message}; {why_not}"))
        return None

    from pathspec.patterns.gitignore import GitIgnorePatternError
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

    rules: list[_Rule] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = _trim_trailing_spaces(raw.removesuffix("\r"))
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line[1:] if negated else line
        directories_only = body.endswith("/") and body != "/"
        matched = body.removesuffix("/") if directories_only else body
        try:
            GitIgnoreSpecPattern(line)  # as written: refused as Git would refuse it
            pattern = GitIgnoreSpecPattern(("!" if negated else "") + matched)
        except GitIgnorePatternError:
            problems.append(Problem(Location(path, number), "", _invalid_pattern(line)))
            continue
        if pattern.include is None or pattern.regex is None:
            problems.append(
                Problem(
                    Location(path, number),
                    "",
                    f"pattern '{line}' matches nothing"
                    + (" (its '[' is never closed; write '\\[' for a '[')" if "[" in line else ""),
                )
            )
            continue
        rules.append(_Rule(number, line, pattern.include, directories_only, pattern.regex))
    return _IgnoreFile(path, tuple(rules))


def _invalid_pattern(line: str) -> str:
    if line == "!":
        reason = "a '!' needs a pattern after it"
    elif line.endswith("\\"):
        reason = "it ends with a lone backslash (write '\\\\' for a backslash)"
    else:  # pragma: no cover - pathspec refuses only the two above today
        reason = "not a gitignore pattern"
    return f"invalid pattern '{line}': {reason}"


def _not_read(message: str) -> str:
    return message.removesuffix("; not read")


_Scope = tuple[_IgnoreFile, str]  # an ignore file, and the current folder relative to its own


def _walk(
    directory: str, ancestors: frozenset[str], scopes: tuple[_Scope, ...], found: Found
) -> None:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        found.problems.append(
            Problem(Location(directory), "", f"cannot read directory: {exc.strerror}")
        )
        return
    if any(entry.name == IGNORE_FILE for entry in entries):
        ignore_file = _read_ignore_file(os.path.join(directory, IGNORE_FILE), found.problems)
        if ignore_file is None:
            return
        scopes = (*scopes, (ignore_file, ""))
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:  # a symbolic link loop; not_a_file says so if it has a manifest's name
            is_dir = False
        if not is_dir and not name.lower().endswith(MANIFEST_SUFFIXES):
            continue  # never read, so not worth matching or listing
        path = os.path.join(directory, name)
        rule, source = _deciding_rule(scopes, name, is_dir)
        if rule is not None and rule.include:
            found.ignored.append(
                Ignored(path + "/" if is_dir else path, source, rule.line, rule.text)
            )
            continue
        if is_dir:
            real = os.path.realpath(path)
            if real in ancestors:
                found.problems.append(
                    Problem(
                        Location(path),
                        "",
                        f"directory symlink loop: it leads back to {real}; not followed",
                    )
                )
                continue
            inner = tuple((ignore, f"{prefix}{name}/") for ignore, prefix in scopes)
            _walk(path, ancestors | {real}, inner, found)
        elif _is_file(entry):
            found.files.append(path)
        else:
            found.problems.append(Problem(Location(path), "", not_a_file(path)))


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _deciding_rule(scopes: tuple[_Scope, ...], name: str, is_dir: bool) -> tuple[_Rule | None, str]:
    """The deepest ignore file's last rule matching `name` in the current folder (Git's order)."""
    for ignore, prefix in reversed(scopes):
        rule = ignore.decide(prefix + name, is_dir)
        if rule is not None:
            return rule, ignore.source
    return None, ""


def iter_found(found: Found) -> Iterator[FileResult]:
    """Load every file `found` holds, one at a time (memory stays flat); its problems first."""
    for problem in found.problems:
        yield FileResult(problem.file, [], [problem], read=False)
    for path in found.files:
        yield load_file(path)


def iter_files(paths: Sequence[str]) -> Iterator[FileResult]:
    """Load every manifest file under `paths`, one file at a time (memory stays flat)."""
    return iter_found(find_manifests(paths))


def load_manifests(paths: Sequence[str]) -> tuple[list[Manifest], list[Problem]]:
    """All manifests under `paths` and every problem met while reading them."""
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for result in iter_files(paths):
        manifests.extend(result.manifests)
        problems.extend(result.problems)
    return manifests, problems


def load_file(path: str) -> FileResult:
    """Read one file: refuse what is not YAML text, then parse every document in it.

    What is not a regular file (a FIFO, a device, a link to one) is refused from its stat alone:
    opening a FIFO blocks, reading /dev/zero never ends. The open is non-blocking, so one that
    became a FIFO since is refused too.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return _refused(path, not_a_file(path))
        if info.st_size > MAX_FILE_BYTES:
            return _refused(
                path,
                f"file is {info.st_size / 1048576:.1f} MiB; manifest files over 5 MiB are refused",
            )
        with open(path, "rb", opener=_open_nonblocking) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return _refused(path, not_a_file(path))
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return _refused(path, f"cannot read file: {exc.strerror}")
    if len(data) > MAX_FILE_BYTES:
        return _refused(path, "file grew over 5 MiB while it was read; refused")
    text, problem = decode_text(path, data)
    if problem is not None:
        return FileResult(path, [], [problem])
    return parse_text(path, text)


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


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
            if manifest is not None and manifest.doc.get("kind") == SET_KIND:
                manifests.extend(expand_set(manifest))
            elif manifest is not None:
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


def _set_like(kind: Any) -> bool:
    """A set's kind, or a mistyped one (`recordtaskset`): the set's budget lets the document be
    read, so the kind itself is what is reported."""
    if not isinstance(kind, str):
        return False
    if kind in KINDS:  # as written almost always: no need to guess what was meant
        return kind == SET_KIND
    closest = difflib.get_close_matches(kind.lower(), [name.lower() for name in KINDS], n=1)
    return closest == [SET_KIND.lower()]


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
        self.repeated = 0  # of `count`, the values aliases repeated
        self.budget = MAX_VALUES_PER_DOCUMENT
        self.kind_read = False  # whether the document's `kind` (which sets the budget) was read

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

    def _spend(
        self, amount: int, line: int, column: int, path: DocPath, *, repeated: bool = False
    ) -> None:
        self.count += amount
        self.repeated += amount if repeated else 0
        if self.count > self.budget:
            raise _DocumentError(line, column, (), self._too_many(), fatal=True)

    def _too_many(self) -> str:
        """Which limit was hit, and how the values add up to it."""
        written = self.count - self.repeated
        if self.budget == MAX_VALUES_PER_SET:
            message = f"{SET_KIND} holds more than {MAX_VALUES_PER_SET} values"
            advice = "split its clips into several sets"
        else:
            message = f"document holds more than {MAX_VALUES_PER_DOCUMENT} values"
            advice = "a manifest has about 30"
        if self.repeated:
            message += (
                f" counting what aliases repeat ({written} written, {self.repeated} repeated by "
                "aliases: each alias counts its anchor's values again, as if written out)"
            )
        if self.repeated > written:
            advice = "most of them repeated by aliases, as in an alias bomb"
        message += f"; {advice}: refused"
        if not self.kind_read:
            message += (
                f" (a {SET_KIND} may hold up to {MAX_VALUES_PER_SET} when its `kind` is "
                "written before its clips)"
            )
        return message

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
            self._spend(size, line, column, path, repeated=True)
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
            if not path and key == "kind":
                self.kind_read = True
                if _set_like(result[key]):
                    self.budget = MAX_VALUES_PER_SET
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
