"""The times a request carries: recordTimes values read, checked and written in UTC.

Apart from the schema module (and jsonschema), so that what only hashes, plans or reports tasks
from a state (verify, receive, state list) need not load the validator.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "FIRST_TIME",
    "LAST_TIME",
    "RECORD_TIME",
    "UTC_TIME",
    "parse_record_time",
    "record_time_problem",
    "utc_record_time",
    "utc_text",
]

RECORD_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
#: A time as canonical requests and states carry it: UTC, to the second, `Z`, ASCII digits.
UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# The first and last times a request can carry (a datetime holds years 1 to 9999).
FIRST_TIME = datetime.min.replace(tzinfo=UTC)
LAST_TIME = datetime.max.replace(microsecond=0, tzinfo=UTC)


def parse_record_time(text: str) -> datetime | None:
    """A recordTimes value as an aware UTC datetime, or None if it is not a real time in the
    format (see record_time_problem for why)."""
    moment, _ = _read_time(text)
    return moment


def record_time_problem(text: str) -> str | None:
    """Why a time in the format is no time a request can carry (None when it is one)."""
    _, problem = _read_time(text)
    return problem


def utc_record_time(text: str) -> str:
    """A valid recordTimes value in the form the request carries: UTC, `Z`."""
    if text.endswith("Z"):
        return text
    moment = parse_record_time(text)
    assert moment is not None, "requests are built from validated manifests only"
    return utc_text(moment)


def _read_time(text: str) -> tuple[datetime | None, str | None]:
    match = RECORD_TIME.fullmatch(text)
    if match is None:
        return None, "not in the format"
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:  # the calendar applies to the time as written
        written = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None, (
            f"{text} is not a real calendar time (check the month, day, hour, minute and "
            "second); use a time like 2018-10-21T10:00:00Z (UTC) or 2018-10-21T18:00:00+08:00"
        )
    sign, hours, minutes = match.group(7, 8, 9)
    if sign is None:
        return written, None
    if int(hours) > 23 or int(minutes) > 59:
        return None, (
            f"{text}: {sign}{hours}:{minutes} is not a real offset (hours 00 to 23, minutes "
            "00 to 59, like +08:00)"
        )
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    try:
        return (written - offset if sign == "+" else written + offset), None
    except OverflowError:
        edge = utc_text(FIRST_TIME if sign == "+" else LAST_TIME)
        when = "before" if sign == "+" else "after"
        return None, (
            f"{text} is {when} {edge} in UTC, the {'first' if sign == '+' else 'last'} time a "
            "request can carry"
        )


def utc_text(moment: datetime) -> str:
    # Not strftime: its %Y writes the year 999 as "999" on some platforms.
    return f"{moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec='seconds')}Z"
