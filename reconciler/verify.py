"""verify: look in the buckets for each due task's file(s) and record what is there (§7b).

A task is due when its last endTime plus the grace period is past. For each due task, each
format it asked for is looked for: first at the downloadUrl a successful callback gave (one
HEAD), else among the objects under its saveObject prefix (one paginated listing per distinct
endpoint, bucket and prefix, shared by every task that needs it), matched by
`reconciler.storage`. What is found is written to the state as evidence (source: storage),
through the same state operation the receiver uses; what is not is `missing`. A bucket that
could not be read is named, and nothing is recorded for any task in it.

Missing is recorded once per task and format (evidence id: sha256 of `missing/HASH/FORMAT`),
with the time it was first found missing: a scheduled verify that finds the same clips missing
again changes nothing in the state (no commit, no growth), and a file found later is recorded
beside it and wins (see model.summarise_recording).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from json.encoder import encode_basestring as _json_string
from typing import TYPE_CHECKING, Any, TextIO, TypeGuard

from reconciler.record_times import UTC_TIME
from reconciler.state.model import (
    MISSING,
    SUCCESS,
    EvidenceSource,
    Recording,
    State,
    StateEntry,
    StateError,
    TaskStatus,
    asked_formats,
    utc_timestamp,
)
from reconciler.storage import (
    KeyPattern,
    ListedObject,
    Listing,
    key_pattern,
    match_listing,
    task_formats,
)
from reconciler.text import (
    FORMAT_VERSION,
    MARKDOWN_COLLAPSE_AFTER,
    UnusualJson,
    github_annotation,
    json_text,
    json_value,
    md_text,
    plural,
    visible,
)

if TYPE_CHECKING:
    from reconciler.bucket import BucketReader, Place
    from reconciler.signing import Credentials
    from reconciler.state import StateBackend

DEFAULT_GRACE_SECONDS = 30 * 60
DEFAULT_CONCURRENCY = 4


class CheckResult(StrEnum):
    """What verify concluded for one due task."""

    FOUND = "found"  # every format's file is in the bucket
    SETTLED = "settled"  # found, and the task was `pending`: settled by evidence
    MISSING = "missing"  # some format's file is not there
    UNREADABLE = "unreadable"  # its bucket could not be read: nothing concluded, nothing recorded


class Via(StrEnum):
    HEAD = "head"  # the callback's downloadUrl, asked with HEAD
    LISTING = "listing"  # found among the objects under the prefix


@dataclass(frozen=True)
class Target:
    """A task to verify: its state entry, and where its manifest is (when one was given)."""

    entry: StateEntry
    source: str
    line: int | None = None


@dataclass(frozen=True)
class FileCheck:
    """One format of a task: the object found (and how), or none."""

    format: str
    key: str | None = None
    size: int | None = None
    url: str | None = None
    via: Via | None = None

    @property
    def found(self) -> bool:
        return self.key is not None


@dataclass(frozen=True)
class TaskCheck:
    target: Target
    place: Place
    prefix: str
    result: CheckResult
    files: tuple[FileCheck, ...]

    @property
    def entry(self) -> StateEntry:
        return self.target.entry

    @property
    def missing_formats(self) -> tuple[str, ...]:
        return tuple(check.format for check in self.files if not check.found)


@dataclass(frozen=True)
class BucketFailure:
    place: Place
    message: str
    tasks: int


@dataclass(frozen=True)
class VerifyOptions:
    credentials: Credentials
    storage_endpoint: str | None = None
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class VerifyResult:
    checked_at: str
    grace_seconds: int
    checks: tuple[TaskCheck, ...]
    failures: tuple[BucketFailure, ...]
    not_due: int
    already_found: int
    recorded: int  # evidence records new to the state
    listings: int = 0
    heads: int = 0
    places: tuple[tuple[Place, tuple[str, ...]], ...] = field(default=())  # prefixes listed

    def of(self, result: CheckResult) -> list[TaskCheck]:
        return [check for check in self.checks if check.result is result]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.of(CheckResult.MISSING) else 0


def last_end(entry: StateEntry) -> str:
    """The task's last endTime, as its request writes it (a canonical UTC time, which
    request_problem has checked: such times compare as text, earlier is smaller)."""
    return str(entry.request["body"]["recordTimes"][-1]["endTime"])


def found_in_storage(entry: StateEntry, recordings: Sequence[Recording]) -> bool:
    """Whether the bucket already showed a file of every format the task asked for."""
    asked = set(asked_formats(entry.request))
    seen = {
        r.format.lower()
        for r in recordings
        if r.source is EvidenceSource.STORAGE and r.status == SUCCESS
    }
    return bool(asked) and seen >= asked


_REQUEST_TEXTS = ("publishDomain", "appName", "streamName", "saveBucket", "saveEndpoint")


def request_problem(request: Mapping[str, Any]) -> str | None:
    """What keeps verify from looking for a state entry's request (None: nothing). A request
    reconciler wrote is always a canonical one; this finds one edited by hand (its hash made to
    match), before any listing: verify reads its fields, times and file types."""
    path, body = request.get("path"), request.get("body")
    if not _is_object(path) or not _is_object(body):
        return "must hold `path` and `body` objects"
    for name in _REQUEST_TEXTS:
        if not isinstance(body.get(name), str):
            return f"body.{name} must be a string"
    if not isinstance(path.get("streamName"), str):
        return "path.streamName must be a string"
    template = body.get("saveObject")
    if template is not None and not isinstance(template, str):
        return "body.saveObject must be a string"
    if not task_formats(body):
        return "body.recordFileType must name a file type (mp4, flv, ...)"
    times = body.get("recordTimes")
    if not isinstance(times, list) or not times:
        return "body.recordTimes must be a non-empty list"
    for index, segment in enumerate(times):
        for name in ("startTime", "endTime"):
            value = segment.get(name) if _is_object(segment) else None
            if not _is_utc_time(value):
                return (
                    f"body.recordTimes[{index}].{name} must be a UTC time like 2026-05-01T00:00:00Z"
                )
    return None


def _is_utc_time(text: object) -> bool:
    """Whether `text` is a real time in the canonical form (such times compare as text)."""
    if not isinstance(text, str) or not UTC_TIME.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text)  # the calendar: no 30 February, no hour 24
    except ValueError:
        return False
    return True


def _is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


def found_evidence(place: Place, key: str) -> str:
    """The evidence id of an object: sha256 of its endpoint, bucket and key."""
    return hashlib.sha256(f"{place.endpoint}/{place.bucket}/{key}".encode()).hexdigest()


def missing_evidence(hash: str, fmt: str) -> str:
    return hashlib.sha256(f"missing/{hash}/{fmt}".encode()).hexdigest()


def run_verify(
    targets: Iterable[Target],
    state: State,
    store: StateBackend | None,
    options: VerifyOptions,
    *,
    now: datetime,
    reader: BucketReader | None = None,
) -> VerifyResult:
    """Look for every due target's files; record the evidence in `store` (None: record nothing)."""
    from reconciler.bucket import BucketError, BucketReader

    targets = list(targets)
    for target in targets:
        problem = request_problem(target.entry.request)
        if problem is not None:
            where = store.shown if store is not None else "the state"
            raise StateError(
                f"{where}: task {target.entry.hash[:12]} ({visible(target.entry.name)}): its "
                f"request is no recording request verify can look for: {problem} (edited by "
                "hand?); nothing was read or recorded"
            )
    if reader is None:
        reader = BucketReader(
            options.credentials,
            storage_endpoint=options.storage_endpoint,
            pool_size=options.concurrency,
        )
    checked_at = utc_timestamp(now)
    deadline = utc_timestamp(now - timedelta(seconds=options.grace_seconds))
    due: list[Target] = []
    not_due = already = 0
    places: dict[str, Place] = {}
    buckets: dict[tuple[str, str], Place] = {}  # one Place per bucket, shared by its tasks
    patterns: dict[str, KeyPattern] = {}
    found: dict[str, dict[str, FileCheck]] = {}
    failed: dict[Place, str] = {}  # the first error per place: HEADs', then listings' as sent
    unreadable: set[Place] = set()  # the places an error has been seen for so far

    def head(job: tuple[str, str, str]) -> tuple[str, str, ListedObject | str | None]:
        hash, fmt, key = job
        try:
            return hash, fmt, reader.head(places[hash], key)
        except BucketError as error:
            return hash, fmt, str(error)

    def listing(job: tuple[Place, str]) -> list[ListedObject] | str:
        place, prefix = job
        try:
            return reader.list(place, prefix)
        except BucketError as error:
            return str(error)

    groups: dict[tuple[Place, str], dict[str, Target]] = {}  # the tasks each listing is for
    listings: dict[tuple[Place, str], Future[list[ListedObject] | str]] = {}

    def list_for(target: Target) -> None:
        hash = target.entry.hash
        group = (places[hash], patterns[hash].prefix)
        groups.setdefault(group, {})[hash] = target
        if group not in listings:
            listings[group] = pool.submit(listing, group)

    concluded: dict[str, tuple[TaskCheck, list[Recording]]] = {}

    def conclude(target: Target) -> None:
        hash = target.entry.hash
        place, pattern = places[hash], patterns[hash]
        seen = found[hash]
        files = tuple(seen[fmt] if fmt in seen else FileCheck(fmt) for fmt in pattern.formats)
        # (`x in a_set` hashes x even when the set is empty: a Place's hash is not free.)
        readable = not unreadable or place not in unreadable
        check = _task_check(target, place, pattern.prefix, files, readable)
        if check.result is CheckResult.UNREADABLE:
            concluded[hash] = check, []
        else:
            concluded[hash] = check, [_recording(place, hash, file, checked_at) for file in files]

    heads: list[Future[tuple[str, str, ListedObject | str | None]]] = []
    headed: list[Target] = []  # the tasks a callback named a file of
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="verify") as pool:
        # One pass over the tasks sends, as soon as a task shows the need, the HEADs of the
        # callbacks' downloadUrls and one listing per distinct (endpoint, bucket, prefix) for
        # every task with a format no callback named; the rest of the pass (the key patterns
        # included) and each task's conclusion are worked out while they are in flight.
        for target in targets:
            entry = target.entry
            if last_end(entry) > deadline:
                not_due += 1
                continue
            hash = entry.hash
            held = state.recordings_of(hash)
            if held and found_in_storage(entry, held):
                already += 1
                continue
            due.append(target)
            body = entry.request["body"]
            named = (str(body["saveEndpoint"]), str(body["saveBucket"]))
            place = buckets.get(named)
            if place is None:
                place = buckets[named] = reader.place(*named)
            places[hash] = place
            pattern = patterns[hash] = key_pattern(entry.request)
            found[hash] = {}
            keys = _downloaded_keys(held, pattern.formats, place.bucket) if held else {}
            if keys:
                headed.append(target)
                heads.extend(pool.submit(head, (hash, fmt, key)) for fmt, key in keys.items())
            if len(keys) < len(pattern.formats):
                list_for(target)
        for answered in heads:
            hash, fmt, outcome = answered.result()
            place = places[hash]
            if isinstance(outcome, str):
                failed.setdefault(place, outcome)
                unreadable.add(place)
            elif outcome is not None:
                found[hash][fmt] = FileCheck(
                    fmt, outcome.key, outcome.size, place.object_url(outcome.key), Via.HEAD
                )
        # A downloadUrl with no object there (404): the prefix is listed for that task too.
        for target in headed:
            hash = target.entry.hash
            if places[hash] not in unreadable and len(found[hash]) < len(patterns[hash].formats):
                list_for(target)
        # Each task is concluded as soon as what it waits for is in: the tasks no listing is
        # for at once, the others as their listing comes; a bucket found unreadable later
        # turns its tasks' conclusions into `unreadable` below.
        waiting = {hash for listed_for in groups.values() for hash in listed_for}
        for target in due:
            if target.entry.hash not in waiting:
                conclude(target)
        sent = {future: group for group, future in listings.items()}
        errors: dict[tuple[Place, str], str] = {}
        for done in as_completed(sent):
            group = sent[done]
            place, listed = group[0], done.result()
            if isinstance(listed, str):
                errors[group] = listed
                unreadable.add(place)
            else:
                wanted = {hash: patterns[hash] for hash in groups[group]}
                for hash, objects in match_listing(wanted, Listing(listed)).items():
                    for fmt, item in objects.items():
                        found[hash].setdefault(
                            fmt,
                            FileCheck(
                                fmt, item.key, item.size, place.object_url(item.key), Via.LISTING
                            ),
                        )
            for target in groups[group].values():
                conclude(target)
    for group in listings:  # the order they were sent in: the same error named every run
        if group in errors:
            failed.setdefault(group[0], errors[group])

    checks: list[TaskCheck] = []
    recordings: list[tuple[str, Recording]] = []
    for target in due:
        hash = target.entry.hash
        check, found_recordings = concluded[hash]
        if failed and check.place in failed and check.result is not CheckResult.UNREADABLE:
            check = replace(check, result=CheckResult.UNREADABLE)
            found_recordings = []
        checks.append(check)
        recordings.extend((hash, recording) for recording in found_recordings)

    recorded = store.record_evidence(recordings) if store is not None and recordings else 0
    failures = tuple(
        BucketFailure(place, message, sum(1 for c in checks if c.place == place))
        for place, message in sorted(failed.items(), key=lambda item: item[0].shown)
    )
    listed_prefixes: dict[Place, list[str]] = {}
    for place, prefix in listings:
        listed_prefixes.setdefault(place, []).append(prefix)
    return VerifyResult(
        checked_at=checked_at,
        grace_seconds=options.grace_seconds,
        checks=tuple(sorted(checks, key=_check_order)),
        failures=failures,
        not_due=not_due,
        already_found=already,
        recorded=recorded,
        listings=len(listings),
        heads=len(heads),
        places=tuple((place, tuple(sorted(p))) for place, p in listed_prefixes.items()),
    )


def _task_check(
    target: Target, place: Place, prefix: str, files: tuple[FileCheck, ...], readable: bool
) -> TaskCheck:
    if not readable:
        result = CheckResult.UNREADABLE
    elif all(file.found for file in files):
        was_pending = target.entry.status is TaskStatus.PENDING
        result = CheckResult.SETTLED if was_pending else CheckResult.FOUND
    else:
        result = CheckResult.MISSING
    return TaskCheck(target, place, prefix, result, files)


def _check_order(check: TaskCheck) -> tuple[str, str, str]:
    return (check.target.source, check.entry.name, check.entry.hash)


def _downloaded_keys(
    recordings: Sequence[Recording], asked: Sequence[str], bucket: str
) -> dict[str, str]:
    """The key in `bucket` a successful callback named for each format asked (the first)."""
    from reconciler.storage import object_key_from_url

    keys: dict[str, str] = {}
    for recording in recordings:
        fmt = recording.format.lower()
        if (
            recording.source is not EvidenceSource.CALLBACK
            or not recording.succeeded
            or recording.download_url is None
            or fmt not in asked
            or fmt in keys
        ):
            continue
        key = object_key_from_url(recording.download_url, bucket)
        if key is not None:
            keys[fmt] = key
    return keys


def _recording(place: Place, hash: str, file: FileCheck, checked_at: str) -> Recording:
    if file.key is None:
        return Recording(
            missing_evidence(hash, file.format),
            EvidenceSource.STORAGE,
            file.format,
            MISSING,
            checked_at,
        )
    return Recording(
        found_evidence(place, file.key),
        EvidenceSource.STORAGE,
        file.format,
        SUCCESS,
        checked_at,
        download_url=file.url,
        file_size=None if file.size is None else str(file.size),
    )


# --- reports: text, json, github, markdown --------------------------------------------------


def _stream(entry: StateEntry) -> str:
    path = entry.request.get("path", {})
    return f"{path.get('publishDomain')}/{path.get('appName')}/{path.get('streamName')}"


def _times(entry: StateEntry, zone: tzinfo) -> str:
    from reconciler.timezones import show_time

    times = entry.request.get("body", {}).get("recordTimes") or []
    if not times:
        return ""
    text = f"{show_time(times[0]['startTime'], zone)} .. {show_time(times[-1]['endTime'], zone)}"
    return text + (f" ({len(times)} segments)" if len(times) > 1 else "")


def check_line(check: TaskCheck, zone: tzinfo = UTC) -> str:
    """One task's result as a line: name, hash, stream, times, then what was found or not."""
    entry = check.entry
    head = (
        f"{visible(entry.name)}  {entry.hash[:12]}  {visible(_stream(entry))}  "
        f"{_times(entry, zone)}"
    )
    if check.result is CheckResult.UNREADABLE:
        return f"{head}  (not checked: {visible(check.place.shown)} could not be read)"
    found = [f"{f.format}: {visible(f.key or '')}" for f in check.files if f.found]
    parts = [f"found {', '.join(found)}"] if found else []
    if check.missing_formats:
        parts.append(
            f"no {'/'.join(check.missing_formats)} file in {visible(check.place.shown)} "
            f"under prefix {visible(repr(check.prefix))}"
        )
    if check.result is CheckResult.SETTLED:
        parts.append("pending task settled: it is never sent again")
    elif check.result is CheckResult.MISSING and entry.status is TaskStatus.PENDING:
        parts.append("pending: the service may never have received it")
    return f"{head}  ({'; '.join(parts)})  [{visible(check.target.source)}]"


def verify_summary(result: VerifyResult) -> str:
    found, settled = result.of(CheckResult.FOUND), result.of(CheckResult.SETTLED)
    missing, unreadable = result.of(CheckResult.MISSING), result.of(CheckResult.UNREADABLE)
    parts = [f"{len(found) + len(settled)} found"]
    if settled:
        parts[0] += f" ({len(settled)} pending settled)"
    parts.append(f"{len(missing)} missing")
    if unreadable:
        parts.append(
            f"{len(unreadable)} not checked ({plural(len(result.failures), 'bucket')} unreadable)"
        )
    tail = []
    if result.already_found:
        tail.append(f"{result.already_found} found earlier")
    if result.not_due:
        tail.append(f"{result.not_due} not due yet")
    text = f"Verified {plural(len(result.checks), 'task')}: {', '.join(parts)}"
    return text + (f"; {', '.join(tail)}." if tail else ".")


_TEXT_SECTIONS = (
    (CheckResult.MISSING, "Missing"),
    (CheckResult.UNREADABLE, "Not checked (bucket unreadable)"),
    (CheckResult.SETTLED, "Found, pending settled"),
    (CheckResult.FOUND, "Found"),
)


def verify_text(
    result: VerifyResult, out: TextIO, *, quiet: bool = False, zone: tzinfo = UTC
) -> None:
    from reconciler.timezones import zone_note

    note = zone_note(zone, result.checked_at)
    if note and not quiet:
        out.write(note + "\n")
    for failure in result.failures:
        out.write(
            f"error: {visible(failure.message)}; nothing was recorded for its "
            f"{failure.tasks} task(s)\n"
        )
    for kind, heading in _TEXT_SECTIONS:
        checks = result.of(kind)
        if not checks or (quiet and kind in (CheckResult.FOUND, CheckResult.SETTLED)):
            continue
        out.write(f"{heading} ({len(checks)}):\n")
        for check in checks:
            out.write(f"  {check_line(check, zone)}\n")
        out.write("\n")
    out.write(verify_summary(result) + "\n")
    if result.of(CheckResult.MISSING) and not quiet:
        out.write(
            "note: missing means no file was found after the grace period; see the README "
            "(verify) for what to check.\n"
        )


def verify_json(result: VerifyResult, *, state_path: str) -> dict[str, Any]:
    """The documented `verify --format json` document (schemas/output.schema.json)."""
    return {**_document_head(result, state_path), "tasks": [_check_json(c) for c in result.checks]}


def verify_json_text(result: VerifyResult, *, state_path: str) -> str:
    """`json_text(verify_json(result))`, with the tasks (nearly all of it: 3,000 tasks are
    2.4 MB) written straight from the checks instead of through dicts; tests/test_verify_json.py
    holds the two to the same text for any result."""
    head = json_text({**_document_head(result, state_path), "tasks": []})
    if not result.checks:
        return head
    try:
        tasks = ",\n    ".join([_check_text(check) for check in result.checks])
    except UnusualJson:  # a value from a hand-edited state that only json writes
        return json_text(verify_json(result, state_path=state_path))
    end = '"tasks": []\n}'
    return head[: -len(end)] + '"tasks": [\n    ' + tasks + "\n  ]\n}"


def _document_head(result: VerifyResult, state_path: str) -> dict[str, Any]:
    failed = {failure.place: failure.message for failure in result.failures}
    buckets = []
    seen = dict.fromkeys([check.place for check in result.checks])
    prefixes = dict(result.places)
    for place in sorted(seen, key=lambda p: p.shown):
        buckets.append(
            {
                "endpoint": place.endpoint,
                "bucket": place.bucket,
                "url": place.url,
                "prefixes": list(prefixes.get(place, ())),
                "readable": place not in failed,
                "error": failed.get(place),
            }
        )
    return {
        "formatVersion": FORMAT_VERSION,
        "command": "verify",
        "state": state_path,
        "exitCode": result.exit_code,
        "checkedAt": result.checked_at,
        "graceSeconds": result.grace_seconds,
        "summary": {
            "checked": len(result.checks),
            **{kind.value: len(result.of(kind)) for kind in CheckResult},
            "foundEarlier": result.already_found,
            "notDue": result.not_due,
            "recorded": result.recorded,
        },
        "buckets": buckets,
    }


def _file_json(file: FileCheck) -> dict[str, Any]:
    document: dict[str, Any] = {"format": file.format, "found": file.found}
    if file.found:
        document.update(key=file.key, downloadUrl=file.url, via=str(file.via))
        if file.size is not None:
            document["size"] = file.size
    return document


def _check_json(check: TaskCheck) -> dict[str, Any]:
    entry = check.entry
    times = entry.request.get("body", {}).get("recordTimes") or []
    return {
        "hash": entry.hash,
        "name": entry.name,
        "source": check.target.source,
        "line": check.target.line,
        "status": entry.status.value,
        "stream": _stream(entry),
        "startTime": times[0]["startTime"],
        "endTime": times[-1]["endTime"],
        "endpoint": check.place.endpoint,
        "bucket": check.place.bucket,
        "prefix": check.prefix,
        "result": check.result.value,
        "files": [_file_json(file) for file in check.files],
    }


# _check_json(check) as json_text writes it inside the document's "tasks" list.
_CHECK_TEXT = """{{
      "hash": {},
      "name": {},
      "source": {},
      "line": {},
      "status": {},
      "stream": {},
      "startTime": {},
      "endTime": {},
      "endpoint": {},
      "bucket": {},
      "prefix": {},
      "result": {},
      "files": {}
    }}"""
_FOUND_TEXT = """{{
          "format": {},
          "found": true,
          "key": {},
          "downloadUrl": {},
          "via": {}{}
        }}"""


def _check_text(check: TaskCheck) -> str:
    # Enum members are written as the strings they are (`.value` is a slow property), and the
    # request's times as the strings request_problem found them to be: this runs per task.
    entry, target, place = check.entry, check.target, check.place
    times = entry.request["body"]["recordTimes"]
    files = []
    for file in check.files:
        if file.key is None:
            files.append(
                '{\n          "format": '
                + _json_string(file.format)
                + ',\n          "found": false\n        }'
            )
            continue
        size = "" if file.size is None else ',\n          "size": ' + json_value(file.size)
        files.append(
            _FOUND_TEXT.format(
                _json_string(file.format),
                _json_string(file.key),
                json_value(file.url),
                _json_string(str(file.via)),
                size,
            )
        )
    return _CHECK_TEXT.format(
        _json_string(entry.hash),
        _json_string(entry.name),
        _json_string(target.source),
        "null" if target.line is None else json_value(target.line),
        _json_string(entry.status),
        _json_string(_stream(entry)),
        _json_string(times[0]["startTime"]),
        _json_string(times[-1]["endTime"]),
        _json_string(place.endpoint),
        _json_string(place.bucket),
        _json_string(check.prefix),
        _json_string(check.result),
        "[\n        " + ",\n        ".join(files) + "\n      ]" if files else "[]",
    )


def verify_github(result: VerifyResult, out: TextIO, *, zone: tzinfo = UTC) -> None:
    """An error per missing task at its manifest's line, one per unreadable bucket."""
    for failure in result.failures:
        out.write(
            github_annotation(
                "error",
                f"{failure.message}; nothing was recorded for its {failure.tasks} task(s)",
                title="reconciler verify",
            )
            + "\n"
        )
    levels = {CheckResult.MISSING: "error", CheckResult.SETTLED: "notice"}
    for check in result.checks:
        level = levels.get(check.result)
        if level is None:
            continue
        out.write(
            github_annotation(
                level,
                f"{check.result.value}: {check_line(check, zone)}",
                file=check.target.source,
                line=check.target.line,
                title="reconciler verify",
            )
            + "\n"
        )
    out.write(verify_summary(result) + "\n")


def verify_markdown(result: VerifyResult, out: TextIO, *, zone: tzinfo = UTC) -> None:
    """For a job summary: what is missing (everything a person needs to look), then the rest."""
    lines = ["### reconciler verify", "", f"**{md_text(verify_summary(result))}**", ""]
    for failure in result.failures:
        lines.append(
            f"- :x: {md_text(failure.message)}; nothing was recorded for its {failure.tasks} task(s)"
        )
    if result.failures:
        lines.append("")
    missing = result.of(CheckResult.MISSING)
    if missing:
        lines += [
            "#### Missing",
            "",
            "| name | task | stream | times | bucket | prefix | missing | manifest |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for check in missing:
            cells = [
                md_text(check.entry.name),
                f"`{check.entry.hash[:12]}`",
                md_text(_stream(check.entry)),
                md_text(_times(check.entry, zone)),
                md_text(check.place.shown),
                md_text(repr(check.prefix)),
                md_text(", ".join(check.missing_formats)),
                md_text(check.target.source),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    found = result.of(CheckResult.SETTLED) + result.of(CheckResult.FOUND)
    if found:
        rows = ["| name | task | result | files |", "|---|---|---|---|"]
        for check in found:
            files = ", ".join(f"{f.format}: {f.key}" for f in check.files)
            rows.append(
                f"| {md_text(check.entry.name)} | `{check.entry.hash[:12]}` | "
                f"{check.result.value} | {md_text(files)} |"
            )
        if len(found) > MARKDOWN_COLLAPSE_AFTER:
            lines += [
                "<details>",
                f"<summary>{len(found)} found</summary>",
                "",
                *rows,
                "",
                "</details>",
                "",
            ]
        else:
            lines += ["#### Found", "", *rows, ""]
    out.write("\n".join(lines) + "\n")
