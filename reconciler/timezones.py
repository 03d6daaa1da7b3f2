"""The zone times are shown in: UTC unless `--timezone ZONE` (or RECONCILER_TIMEZONE) names an
IANA zone. Pure: no I/O beyond reading the zone's rules from the system's tz database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.record_times import parse_record_time

UTC_NAME = "UTC"


class ZoneError(ValueError):
    """A name that is no IANA time zone."""


def display_zone(name: str) -> tzinfo:
    """The zone called `name` (`Asia/Shanghai`, `UTC`); ZoneError if there is none."""
    if name in (UTC_NAME, "Etc/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        shown = name.encode("unicode_escape").decode("ascii")
        raise ZoneError(
            f"{shown!r} is not an IANA time zone name (such as UTC, Asia/Shanghai or "
            "America/New_York)"
        ) from None


def zone_name(zone: tzinfo) -> str:
    return str(zone) if isinstance(zone, ZoneInfo) else UTC_NAME


def is_utc(zone: tzinfo) -> bool:
    return zone is UTC


def parse_utc(moment: str) -> datetime | None:
    """`2026-11-20T19:11:40Z` (or with an offset) as an aware datetime; None if it is not one."""
    try:
        return parse_record_time(moment)
    except (TypeError, ValueError):
        return None


def local(moment: datetime, zone: tzinfo) -> datetime | None:
    """`moment` on the clock of `zone`; None where that clock leaves the calendar (year 9999)."""
    try:
        return moment.astimezone(zone)
    except (OverflowError, ValueError):
        return None


def offset_text(offset: timedelta | None) -> str:
    """`+08:00`, `-05:00`, `+05:45` (seconds, as in a few historical zones, are dropped)."""
    minutes = int((offset or timedelta()).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def show_time(moment: str, zone: tzinfo) -> str:
    """A UTC time of a manifest or the state as the reader's zone shows it: unchanged in UTC
    (`2026-11-20T19:11:40Z`), else ISO 8601 with that zone's offset at that instant
    (`2026-11-21T03:11:40+08:00`). A time that zone cannot show (past year 9999) stays in UTC,
    where its `Z` still says which clock it is on; text that is no time is returned as is."""
    parsed = parse_utc(moment)
    if parsed is None:
        return moment
    if is_utc(zone):
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    shown = local(parsed, zone)
    if shown is None:
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return shown.strftime("%Y-%m-%dT%H:%M:%S") + offset_text(shown.utcoffset())


def zone_note(zone: tzinfo, at: str) -> str | None:
    """`Times are in Asia/Shanghai (UTC+08:00 at 2026-11-21T03:00:00+08:00).` for a zone other
    than UTC: the offset at the instant `at` (the plan's time); each time shown carries its own,
    which differs across a daylight-saving change."""
    if is_utc(zone):
        return None
    moment = parse_utc(at)
    shown = local(moment, zone) if moment is not None else None
    if shown is None:
        return f"Times are in {zone_name(zone)}."
    return f"Times are in {zone_name(zone)} (UTC{offset_text(shown.utcoffset())} at {show_time(at, zone)})."
