"""Record callbacks: a callback body read leniently, and matched to the task it is about.

Pure: a function of (body, the state's tasks), no HTTP and no clock; reconciler/receiver.py is
the HTTP edge, and the state backends persist what `match_callback` decides.

JD Cloud Live posts one body per written file ("record_done", DESIGN §7a). Read leniently:
numbers may come as strings or as numbers, `group` times are epoch milliseconds, unknown fields
are kept (the body is stored as received), an older body names the id `vodTaskId`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.state.model import (
    EvidenceSource,
    Recording,
    StateEntry,
    UnmatchedCallback,
)

RECORD_DONE = "record_done"
#: How many tasks an "ambiguous" reason names before it says "and N more".
_NAMED = 5


class CallbackError(ValueError):
    """The body is not a callback at all (not a JSON object): answered 400, not stored."""


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback body, read leniently; `body` is exactly what was received."""

    body: Mapping[str, Any]
    id: str  # sha256 of the body's canonical JSON: the same callback twice has the same id
    event: str | None
    status: str | None
    format: str | None
    publish_domain: str | None
    app_name: str | None
    stream_name: str | None
    segments: tuple[tuple[int, int], ...] | None  # (begin, end) epoch ms; None: unreadable
    external_id: str | None
    download_url: str | None
    file_size: str | None
    duration: str | None

    @property
    def stream(self) -> str:
        return "/".join(
            part if part is not None else "?"
            for part in (self.publish_domain, self.app_name, self.stream_name)
        )


@dataclass(frozen=True, slots=True)
class Match:
    """What a callback is about: one task (`entry`), or none, and then why (`reason`)."""

    entry: StateEntry | None
    reason: str | None = None


def parse_body(raw: bytes) -> Callback:
    """A callback from the bytes of a request body; CallbackError if it is no JSON object."""
    try:
        # Decoded here, strictly: json.loads would also take UTF-16 and UTF-32 bytes.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CallbackError(f"the body is not UTF-8 ({_short(error)})") from None
    try:
        document = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise CallbackError("the body is nested too deeply to be a callback") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CallbackError(f"the body is not JSON ({_short(error)})") from None
    return parse_callback(document)


def parse_callback(document: object) -> Callback:
    """A callback from a decoded JSON value; CallbackError if it is no JSON object."""
    if not isinstance(document, dict):
        raise CallbackError(f"the body is a JSON {_json_kind(document)}, not an object")
    try:
        canonical = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (RecursionError, ValueError) as error:
        # ValueError: infinity (the decoder reads 1e400 as one, and the state cannot keep it),
        # or an integer past int's digit limit.
        raise CallbackError(f"the body cannot be kept as JSON ({_short(error)})") from None
    external = _text(document.get("taskExternalId"))
    if external is None:
        external = _text(document.get("vodTaskId"))
    try:
        encoded = canonical.encode("utf-8")
    except UnicodeEncodeError:
        raise CallbackError("the body holds a lone surrogate (\\ud800 style): not text") from None
    return Callback(
        body=document,
        id=hashlib.sha256(encoded).hexdigest(),
        event=_text(document.get("event")),
        status=_text(document.get("status")),
        format=_lower(_text(document.get("format"))),
        publish_domain=_lower(_text(document.get("publishDomain"))),
        app_name=_text(document.get("appName")),
        stream_name=_text(document.get("streamName")),
        segments=_segments(document.get("group")),
        external_id=external,
        download_url=_text(document.get("downloadUrl")),
        file_size=_text(document.get("fileSize")),
        duration=_text(document.get("duration")),
    )


def match_callback(callback: Callback, candidates: Iterable[StateEntry]) -> Match:
    """The one task `callback` is about, among `candidates` (a superset is fine), or why none.

    By taskExternalId first (narrowed by stream and segments when several tasks share it);
    without an id, by stream (publishDomain, appName, streamName) and segments (each `group`
    item equals a recordTime, to the second). No match, or more than one: no task, and the
    reason, so the callback is kept as unmatched: never dropped, never guessed.
    """
    if callback.event != RECORD_DONE:
        shown = "no event" if callback.event is None else f"event {callback.event!r}"
        return Match(None, f"{shown}, not {RECORD_DONE!r}: not a record callback")
    if callback.external_id is not None:
        sharing = [e for e in candidates if e.sent_external_id == callback.external_id]
        if not sharing:
            return Match(
                None, f"no task in this state was sent taskExternalId {callback.external_id!r}"
            )
        if len(sharing) == 1:
            return Match(sharing[0])
        narrowed = [e for e in sharing if same_clip(callback, e)]
        if len(narrowed) == 1:
            return Match(narrowed[0])
        return Match(
            None,
            f"{len(sharing)} tasks share taskExternalId {callback.external_id!r} and "
            + _ambiguity(narrowed, callback),
        )
    if callback.segments is None or None in (
        callback.publish_domain,
        callback.app_name,
        callback.stream_name,
    ):
        return Match(
            None,
            "no taskExternalId, and no stream and segments to match by (publishDomain, "
            "appName, streamName and group are needed)",
        )
    found = [e for e in candidates if same_clip(callback, e)]
    if len(found) == 1:
        return Match(found[0])
    return Match(None, "no taskExternalId, and " + _ambiguity(found, callback))


def same_clip(callback: Callback, entry: StateEntry) -> bool:
    """Whether `callback` names `entry`'s stream and each of its segments, to the second."""
    path = entry.request.get("path")
    body = entry.request.get("body")
    if not isinstance(path, Mapping) or not isinstance(body, Mapping):
        return False
    if (
        str(path.get("publishDomain", "")).lower() != callback.publish_domain
        or path.get("appName") != callback.app_name
        or path.get("streamName") != callback.stream_name
        or callback.segments is None
    ):
        return False
    wanted = request_segments(body)
    if wanted is None or len(wanted) != len(callback.segments):
        return False
    return all(
        abs(begin - start * 1000) < 1000 and abs(end - stop * 1000) < 1000
        for (begin, end), (start, stop) in zip(sorted(callback.segments), wanted, strict=True)
    )


def request_segments(body: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """A request's recordTimes as (start, end) epoch seconds, in order; None if unreadable."""
    times = body.get("recordTimes")
    if not isinstance(times, Sequence):
        return None
    try:
        return sorted(
            (_epoch(segment["startTime"]), _epoch(segment["endTime"])) for segment in times
        )
    except (KeyError, TypeError, ValueError):
        return None


def recording_of(callback: Callback, received_at: str) -> Recording:
    """The evidence a matched callback gives (source: callback)."""
    return Recording(
        evidence=callback.id,
        source=EvidenceSource.CALLBACK,
        format=callback.format or "",
        status=callback.status or "unknown",
        received_at=received_at,
        download_url=callback.download_url,
        file_size=callback.file_size,
        duration=callback.duration,
    )


def unmatched_of(callback: Callback, reason: str, received_at: str) -> UnmatchedCallback:
    return UnmatchedCallback(callback.id, received_at, reason, callback.body)


def _ambiguity(found: Sequence[StateEntry], callback: Callback) -> str:
    where = f"stream {callback.stream} with {_segments_text(callback)}"
    if not found:
        return f"no task in this state records {where}"
    names = sorted(f"{e.name} ({e.hash[:12]})" for e in found)
    shown = ", ".join(names[:_NAMED]) + (
        f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    )
    return f"{len(found)} tasks record {where}: {shown}; cannot tell which"


def _segments_text(callback: Callback) -> str:
    if not callback.segments:
        return "no segments"
    return ", ".join(f"{_utc(begin)}..{_utc(end)}" for begin, end in callback.segments[:3]) + (
        " ..." if len(callback.segments) > 3 else ""
    )


def _utc(millis: int) -> str:
    try:
        return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(millis)


def _epoch(text: object) -> int:
    if not isinstance(text, str):
        raise TypeError("a recordTime is a string")
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(moment.timestamp())


def _segments(group: object) -> tuple[tuple[int, int], ...] | None:
    if not isinstance(group, list) or not group:
        return None
    segments = []
    for item in group:
        if not isinstance(item, dict):
            return None
        begin, end = _millis(item.get("beginTime")), _millis(item.get("endTime"))
        if begin is None or end is None:
            return None
        segments.append((begin, end))
    return tuple(segments)


def _millis(value: object) -> int | None:
    """Epoch milliseconds given as a number or a string of digits (a fraction is dropped)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return None
        if isinstance(number, float) and not (number == number and abs(number) < 1e18):
            return None
        return int(number)
    return None


def _text(value: object) -> str | None:
    """A field as text: strings as they are, numbers as written (never a float's noise)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return repr(value) if not value.is_integer() else str(int(value))
    return None


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True, slots=True)
class StoredCallback:
    """What the state made of one callback: matched to `entry`, or kept unmatched (`reason`).

    `duplicate`: the state already held this callback (delivered twice), so nothing changed.
    """

    entry: StateEntry | None
    reason: str | None
    duplicate: bool


def decide(
    callback: Callback,
    candidates: Iterable[StateEntry],
    held: Callable[[str], Sequence[Recording]],
    received_at: str,
) -> tuple[Match, Recording | None, UnmatchedCallback | None]:
    """The one decision every backend persists: the match, and the evidence or unmatched record.

    `held(hash)` gives the evidence a task already has (to keep a duplicate out).
    """
    match = match_callback(callback, candidates)
    if match.entry is None:
        assert match.reason is not None
        return match, None, unmatched_of(callback, match.reason, received_at)
    if any(r.evidence == callback.id for r in held(match.entry.hash)):
        return match, None, None
    return match, recording_of(callback, received_at), None
