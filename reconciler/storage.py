"""Which keys a task may have written in its bucket, from its saveObject template (pure).

DESIGN §7b: the placeholders are patterns. {AppName} and {StreamName} are literal; {format} is
one of the task's file types; {Date} (`yyyyMMdd`), {StartTime} and {EndTime}
(`yyyyMMddHHmmss`, the first start and the last end) are written in UTC or in UTC+8, since
the service's zone is not documented (its own example writes UTC+8), one zone per key;
{ServerId} is any one path segment. A template without {format} matches the key itself or the
key plus `.{format}`. The listing prefix is the text before the first placeholder.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from reconciler.record_times import UTC_TIME

DEFAULT_SAVE_OBJECT = (
    "record/{Date}/{ServerId}/{AppName}/{StreamName}/{StartTime}_{EndTime}.{format}"
)
#: The zones the service may write times in: UTC, and UTC+8 (China Standard Time).
SERVICE_ZONES: tuple[tzinfo, ...] = (UTC, timezone(timedelta(hours=8)))
SERVER_ID = "{ServerId}"
_PLACEHOLDER = re.compile(r"\{(AppName|StreamName|format|Date|StartTime|EndTime|ServerId)\}")


def save_template(body: Mapping[str, Any]) -> str:
    """The task's saveObject template (the default when unset), without a leading `/`: the
    documented example writes `/xxx/yourobject`, and an S3 key has no leading slash."""
    template = body.get("saveObject")
    if not isinstance(template, str) or not template:
        template = DEFAULT_SAVE_OBJECT
    return template.lstrip("/")


@functools.lru_cache(maxsize=256)
def listing_prefix(template: str) -> str:
    """The text before the template's first placeholder: all that verify lists."""
    found = _PLACEHOLDER.search(template)
    return template if found is None else template[: found.start()]


# UTC+8's hour for each UTC hour before 16, when both zones are on the same day.
_EAST_HOURS = {f"{hour:02d}": f"{hour + 8:02d}" for hour in range(16)}
_EAST_OFFSET = timedelta(hours=8)


@functools.lru_cache(maxsize=4096)
def service_times(moment: str) -> tuple[tuple[str, str], ...]:
    """(`yyyyMMdd`, `yyyyMMddHHmmss`) of the request time `moment` (UTC,
    `YYYY-MM-DDTHH:MM:SSZ`, as a canonical request carries it) in each zone the service may
    write; ValueError for text that is no such time."""
    parsed = datetime.fromisoformat(moment)  # ValueError for a day or hour the calendar lacks
    if UTC_TIME.fullmatch(moment):
        # The canonical form (UTC: its `Z`): the digits are the text's own, and UTC+8's too
        # while it is the same day there; else those of the ISO text 8 hours on (this runs
        # for every task verify looks for: no clock arithmetic per zone).
        day, clock = moment[0:4] + moment[5:7] + moment[8:10], moment[14:16] + moment[17:19]
        utc = (day, day + moment[11:13] + clock)
        east_hour = _EAST_HOURS.get(moment[11:13])
        if east_hour is not None:
            return (utc, (day, day + east_hour + clock))
        east = (parsed + _EAST_OFFSET).isoformat()
        east_day = east[0:4] + east[5:7] + east[8:10]
        return (utc, (east_day, east_day + east[11:13] + clock))
    if parsed.utcoffset() != timedelta(0):
        raise ValueError(f"{moment!r} is not a UTC time")
    written = []
    for zone in SERVICE_ZONES:
        local = parsed.astimezone(zone)
        day = f"{local.year:04d}{local.month:02d}{local.day:02d}"
        written.append((day, f"{day}{local.hour:02d}{local.minute:02d}{local.second:02d}"))
    return tuple(written)


@functools.lru_cache(maxsize=256)
def _writers(template: str, fmt: str) -> str:
    """The template for one format as a `str.format` text: {format} written out, every other
    placeholder a positional field (see _FIELDS; {ServerId} kept as its own text), literal
    braces doubled. Built once per template and format: a task only fills in its values."""
    pieces: list[str] = []
    at = 0
    for found in _PLACEHOLDER.finditer(template):
        pieces.append(_literal(template[at : found.start()]))
        name = found.group(1)
        if name == "ServerId":
            pieces.append(_literal(SERVER_ID))
        elif name == "format":
            pieces.append(_literal(fmt))
        else:
            pieces.append("{" + str(_FIELDS.index(name)) + "}")
        at = found.end()
    pieces.append(_literal(template[at:]))
    return "".join(pieces)


# The order key_pattern passes each task's values to a writer in.
_FIELDS = ("AppName", "StreamName", "Date", "StartTime", "EndTime")


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _fits(key: str, pieces: Sequence[str]) -> bool:
    """Whether `key` is `pieces` joined by one or more characters other than `/` each: the
    regular expression `[^/]+`.join(pieces), fully matched, without compiling one per task."""
    first, last = pieces[0], pieces[-1]
    if (
        len(key) < len(first) + len(last) + len(pieces) - 1
        or not key.startswith(first)
        or not key.endswith(last)
    ):
        return False
    return _fits_from(key, pieces, 1, len(first), len(key) - len(last))


def _fits_from(key: str, pieces: Sequence[str], index: int, at: int, end: int) -> bool:
    """Whether key[at:end] is a gap, pieces[index], a gap, ... (the last piece is at `end`)."""
    if index == len(pieces) - 1:
        return end > at and key.find("/", at, end) < 0
    piece = pieces[index]
    slash = key.find("/", at, end)
    limit = end if slash < 0 else slash  # a gap ends where its segment does, at the latest
    window = min(limit + len(piece), end)
    start = key.find(piece, at + 1, window)
    while 0 <= start <= limit:
        if _fits_from(key, pieces, index + 1, start + len(piece), end):
            return True
        start = key.find(piece, start + 1, window)
    return False


@dataclass(frozen=True)
class KeyPattern:
    """Every key one task may have written, per format.

    `exact`: candidate keys (templates without {ServerId}) and the format each stands for.
    `shaped`: for templates with {ServerId}, the literal pieces around each {ServerId} (one
    path segment or part of one, at least one character) per format; `tail` is the literal
    text after the last {ServerId} when that text holds a `/` (then the key's last segment is
    known exactly and a listing is searched by it, not scanned).
    """

    formats: tuple[str, ...]
    prefix: str
    exact: Mapping[str, str] = field(default_factory=dict)
    shaped: tuple[tuple[tuple[str, ...], str, str | None], ...] = ()

    def format_of(self, key: str) -> str | None:
        """The format `key` is a file of for this task, or None when it is no file of it."""
        found = self.exact.get(key)
        if found is not None:
            return found
        for pieces, fmt, _ in self.shaped:
            if _fits(key, pieces):
                return fmt
        return None


@functools.lru_cache(maxsize=256)
def _formats_of(types: str) -> tuple[str, ...]:
    return tuple(sorted({part.strip().lower() for part in types.split(";") if part.strip()}))


def task_formats(body: Mapping[str, Any]) -> tuple[str, ...]:
    types = body.get("recordFileType")
    if not isinstance(types, str):
        return ()
    return _formats_of(types)


@functools.lru_cache(maxsize=256)
def _shape(template: str, formats: tuple[str, ...]) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """Whether `template` writes {format}, and its writer per format (once per template)."""
    return "{format}" in template, tuple((fmt, _writers(template, fmt)) for fmt in formats)


def key_pattern(request: Mapping[str, Any]) -> KeyPattern:
    """What keys the task `request` (its canonical form: path and body) may have written."""
    body = request["body"]
    template = save_template(body)
    formats = task_formats(body)
    with_format, writers = _shape(template, formats)
    single = len(formats) == 1
    segments = body["recordTimes"]
    starts, ends = service_times(segments[0]["startTime"]), service_times(segments[-1]["endTime"])
    app, stream = str(body["appName"]), str(body["streamName"])
    exact: dict[str, str] = {}
    shaped: list[tuple[tuple[str, ...], str, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for (date, start_text), (_, end_text) in zip(starts, ends, strict=True):
        for fmt, writer in writers:
            written = writer.format(app, stream, date, start_text, end_text)  # _FIELDS' order
            if with_format:
                candidates: tuple[str, ...] = (written,)
            # Without {format}: the key itself stands for the task's only format, or for the
            # format it already ends with (`clip.mp4`); the key plus `.{format}` for that format.
            elif single or written.lower().endswith("." + fmt):
                candidates = (written, f"{written}.{fmt}")
            else:
                candidates = (f"{written}.{fmt}",)
            for candidate in candidates:
                if SERVER_ID not in candidate:
                    exact.setdefault(candidate, fmt)  # the first format a key stands for
                    continue
                if (candidate, fmt) in seen:
                    continue
                seen.add((candidate, fmt))
                pieces = tuple(candidate.split(SERVER_ID))
                tail = pieces[-1]
                shaped.append((pieces, fmt, tail if "/" in tail else None))
    return KeyPattern(formats, listing_prefix(template), exact, tuple(shaped))


@dataclass(frozen=True)
class ListedObject:
    """One object a listing returned."""

    key: str
    size: int | None = None


class Listing:
    """The objects under one prefix, indexed for matching many tasks against them."""

    def __init__(self, objects: Iterable[ListedObject]) -> None:
        self.objects: dict[str, ListedObject] = {item.key: item for item in objects}
        self._by_last_segment: dict[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.objects)

    def candidates(self, pattern: KeyPattern) -> list[tuple[str, str]]:
        """(key, format) of every listed object that is a file of the task `pattern` is for."""
        found = [(key, fmt) for key, fmt in pattern.exact.items() if key in self.objects]
        for pieces, fmt, tail in pattern.shaped:
            if tail is not None:
                keys: Iterable[str] = self._last_segments().get(tail.rsplit("/", 1)[1], ())
            else:  # {ServerId} in the last segment: nothing to look keys up by
                keys = self.objects
            found.extend((key, fmt) for key in keys if _fits(key, pieces))
        return found

    def _last_segments(self) -> dict[str, list[str]]:
        if self._by_last_segment is None:
            index: dict[str, list[str]] = {}
            for key in self.objects:
                index.setdefault(key.rsplit("/", 1)[-1], []).append(key)
            self._by_last_segment = index
        return self._by_last_segment


def match_listing(
    patterns: Mapping[str, KeyPattern], listing: Listing
) -> dict[str, dict[str, ListedObject]]:
    """For each task (by hash) whose pattern is given, the object found per format.

    A key that several tasks may have written (one stream's clips eight hours apart: one's
    UTC+8 times are the other's UTC times) goes to the only one of them without another file
    of that format; when that does not decide it, to none (evidence is never guessed).
    """
    claims: dict[str, list[tuple[str, str]]] = {}
    for task, pattern in patterns.items():
        for key, fmt in listing.candidates(pattern):
            claims.setdefault(key, []).append((task, fmt))
    found: dict[str, dict[str, ListedObject]] = {}
    shared: list[tuple[str, list[tuple[str, str]]]] = []
    for key in sorted(claims):
        claimants = list(dict.fromkeys(claims[key]))
        if len(claimants) == 1:
            task, fmt = claimants[0]
            found.setdefault(task, {}).setdefault(fmt, listing.objects[key])
        else:
            shared.append((key, claimants))
    for key, claimants in shared:
        open_claims = [(task, fmt) for task, fmt in claimants if fmt not in found.get(task, {})]
        if len(open_claims) == 1:
            task, fmt = open_claims[0]
            found.setdefault(task, {})[fmt] = listing.objects[key]
    return found


def object_key_from_url(url: str, bucket: str) -> str | None:
    """The key a callback's downloadUrl names in `bucket`: path-style (`host/bucket/key`) or
    virtual-hosted (`bucket.host/key`); None when it names no object of that bucket."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    path = unquote(parts.path)
    if parts.hostname.startswith(bucket.lower() + "."):
        key = path.lstrip("/")
    elif path.startswith(f"/{bucket}/"):
        key = path[len(bucket) + 2 :]
    else:
        return None
    return key or None
