"""storage.py: which keys a task may have written (pure; no bucket needed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.storage import (
    DEFAULT_SAVE_OBJECT,
    SERVICE_ZONES,
    ListedObject,
    Listing,
    _fits,
    key_pattern,
    listing_prefix,
    match_listing,
    object_key_from_url,
    save_template,
    service_times,
)
from reconciler.tasks import canonical_request, request_hash

# 2026-11-20T19:11:40Z .. 19:13:10Z is 2026-11-21 03:11:40 .. 03:13:10 in UTC+8: another day.
START, END = "2026-11-20T19:11:40Z", "2026-11-20T19:13:10Z"
UTC_TIMES = "20261120191140_20261120191310"
CST_TIMES = "20261121031140_20261121031310"


def request(save_object: str | None = None, types: str = "mp4", **spec: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "publishDomain": "push.example.com",
        "appName": "live",
        "streamName": "cup-final",
        "recordTimes": [{"startTime": START, "endTime": END}],
        "saveBucket": "highlights",
        "saveEndpoint": "s3.cn-north-1.jdcloud-oss.com",
        "recordFileType": types,
        **spec,
    }
    if save_object is not None:
        fields["saveObject"] = save_object
    return canonical_request(fields)


def formats_of(req: dict[str, Any], *keys: str) -> list[str | None]:
    pattern = key_pattern(req)
    return [pattern.format_of(key) for key in keys]


def test_default_template_and_its_prefix() -> None:
    assert save_template(request()["body"]) == DEFAULT_SAVE_OBJECT
    assert key_pattern(request()).prefix == "record/"


def test_default_template_in_utc_and_in_utc_plus_8() -> None:
    assert formats_of(
        request(),
        f"record/20261120/node-7/live/cup-final/{UTC_TIMES}.mp4",
        f"record/20261121/node-7/live/cup-final/{CST_TIMES}.mp4",
        # The documented example's {ServerId} is a host name: still one segment.
        f"record/20261121/push.jd.com/live/cup-final/{CST_TIMES}.mp4",
    ) == ["mp4", "mp4", "mp4"]


def test_keys_that_almost_match_do_not() -> None:
    assert (
        formats_of(
            request(),
            f"record/20261120/node-7/live/cup-final/{UTC_TIMES}.flv",  # another format
            f"record/20261120/node-7/live/cup-final-2/{UTC_TIMES}.mp4",  # another stream
            f"record/20261120/node-7/live/cup-fina/{UTC_TIMES}.mp4",
            f"record/20261120/node-7/tv/cup-final/{UTC_TIMES}.mp4",  # another app
            "record/20261120/node-7/live/cup-final/20261120191141_20261120191310.mp4",  # +1 s
            "record/20261120/node-7/live/cup-final/20261120191139_20261120191310.mp4",  # -1 s
            "record/20261120/node-7/live/cup-final/20261120191140_20261120191311.mp4",
            # Zones mixed in one key: the date in UTC+8, the times in UTC.
            f"record/20261121/node-7/live/cup-final/{UTC_TIMES}.mp4",
            f"record/20261120/a/b/live/cup-final/{UTC_TIMES}.mp4",  # {ServerId} is ONE segment
            f"record/20261120//live/cup-final/{UTC_TIMES}.mp4",  # ... and not an empty one
            f"record/20261120/node-7/live/cup-final/{UTC_TIMES}.mp4.part",
            f"x/record/20261120/node-7/live/cup-final/{UTC_TIMES}.mp4",
        )
        == [None] * 12
    )


def test_a_template_with_no_placeholders() -> None:
    req = request("/clips/goal-1.mp4")  # the documented example writes a leading slash
    pattern = key_pattern(req)
    assert pattern.prefix == "clips/goal-1.mp4"
    assert formats_of(req, "clips/goal-1.mp4", "clips/goal-1.mp4.mp4", "clips/goal-1") == [
        "mp4",
        "mp4",
        None,
    ]


def test_without_format_the_key_or_the_key_plus_the_format() -> None:
    req = request("clips/{StreamName}-{StartTime}", types="flv;mp4")
    key = f"clips/cup-final-{UTC_TIMES[:14]}"
    # Two formats: the bare key cannot be both files, so only `key.{format}` tells them apart.
    assert formats_of(req, f"{key}.flv", f"{key}.mp4", key, f"{key}.ts") == [
        "flv",
        "mp4",
        None,
        None,
    ]
    single = request("clips/{StreamName}-{StartTime}", types="ts")
    assert formats_of(single, key, f"{key}.ts", f"{key}.mp4") == ["ts", "ts", None]


def test_with_format_in_the_template() -> None:
    req = request("a/{AppName}/{StreamName}/{Date}/{EndTime}.{format}", types="MP4;flv")
    assert key_pattern(req).prefix == "a/"
    assert key_pattern(req).formats == ("flv", "mp4")
    assert formats_of(
        req,
        "a/live/cup-final/20261120/20261120191310.flv",
        "a/live/cup-final/20261121/20261121031310.mp4",
        "a/live/cup-final/20261120/20261120191310",  # {format} is not optional here
        "a/live/cup-final/20261120/20261120191310.ts",
    ) == ["flv", "mp4", None, None]


def test_server_id_inside_a_segment() -> None:
    req = request("r/{StreamName}_{ServerId}.{format}")
    assert formats_of(req, "r/cup-final_n1.mp4", "r/cup-final_.mp4", "r/cup-final_a/b.mp4") == [
        "mp4",
        None,
        None,
    ]


def test_several_segments_use_the_first_start_and_the_last_end() -> None:
    req = request(
        "s/{StartTime}_{EndTime}.{format}",
        recordTimes=[
            {"startTime": "2026-11-20T19:11:40Z", "endTime": "2026-11-20T19:12:00Z"},
            {"startTime": "2026-11-20T19:20:00Z", "endTime": "2026-11-20T19:21:05Z"},
        ],
    )
    assert formats_of(req, "s/20261120191140_20261120192105.mp4") == ["mp4"]
    assert formats_of(req, "s/20261120191140_20261120191200.mp4") == [None]


def test_listing_prefix_is_the_text_before_the_first_placeholder() -> None:
    assert listing_prefix("clips/2026/{StreamName}/{Date}.{format}") == "clips/2026/"
    assert listing_prefix("{Date}/x") == ""
    assert listing_prefix("fixed/name.mp4") == "fixed/name.mp4"


def test_matching_a_listing_of_many_tasks() -> None:
    one = request()
    other = request(streamName="other")
    both = request(types="flv;mp4", streamName="two")
    keys = [
        f"record/20261121/n1/live/cup-final/{CST_TIMES}.mp4",
        f"record/20261121/n1/live/two/{CST_TIMES}.flv",
        f"record/20261121/n1/live/unrelated/{CST_TIMES}.mp4",
    ]
    listing = Listing(ListedObject(key, 10) for key in keys)
    found = match_listing(
        {request_hash(r): key_pattern(r) for r in (one, other, both)},
        listing,
    )
    assert found == {
        request_hash(one): {"mp4": ListedObject(keys[0], 10)},
        request_hash(both): {"flv": ListedObject(keys[1], 10)},
    }


def test_a_key_two_tasks_may_have_written_goes_to_the_one_without_another_file() -> None:
    # Clips eight hours apart: A's UTC+8 times are B's UTC times.
    a = request("k/{StartTime}.{format}")
    b = request(
        "k/{StartTime}.{format}",
        recordTimes=[{"startTime": "2026-11-21T03:11:40Z", "endTime": "2026-11-21T03:13:10Z"}],
    )
    patterns = {"A": key_pattern(a), "B": key_pattern(b)}
    shared, b_own = "k/20261121031140.mp4", "k/20261121111140.mp4"
    # The service writes UTC+8: A's file is the shared key, B's its own.
    found = match_listing(patterns, Listing([ListedObject(shared), ListedObject(b_own)]))
    assert found == {"A": {"mp4": ListedObject(shared)}, "B": {"mp4": ListedObject(b_own)}}
    # Only the shared key: it could be either one's, so it is evidence for neither.
    assert match_listing(patterns, Listing([ListedObject(shared)])) == {}


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://s3.cn-north-1.jcloudcs.com/highlights/record/a%20b.mp4", "record/a b.mp4"),
        ("https://highlights.s3.cn-north-1.jdcloud-oss.com/record/x.mp4", "record/x.mp4"),
        ("http://s3.example.com/other-bucket/record/x.mp4", None),
        ("ftp://s3.example.com/highlights/x.mp4", None),
        ("not a url", None),
        ("http://s3.example.com/highlights/", None),
    ],
)
def test_object_key_from_a_download_url(url: str, key: str | None) -> None:
    assert object_key_from_url(url, "highlights") == key


@given(
    pieces=st.lists(st.text("ab/{}", max_size=3), min_size=2, max_size=4),
    key=st.text("ab/{}", max_size=12),
)
def test_server_id_matching_is_one_or_more_characters_other_than_a_slash(
    pieces: list[str], key: str
) -> None:
    # {ServerId} is matched without a regular expression per task: the same answers as one.
    expected = re.fullmatch("[^/]+".join(re.escape(piece) for piece in pieces), key) is not None
    assert _fits(key, pieces) is expected


def test_server_id_twice_in_one_segment() -> None:
    req = request("r/{ServerId}-{StreamName}-{ServerId}.{format}")
    assert formats_of(
        req, "r/a-b-cup-final-c.mp4", "r/a-cup-final-.mp4", "r/a/-cup-final-c.mp4"
    ) == ["mp4", None, None]


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30)))
def test_service_times_are_each_zones_clock_for_any_canonical_time(moment: datetime) -> None:
    # service_times reads the canonical text's own digits where it can; the answer must be
    # what each zone's clock says, on every day, across midnight and the year's end included.
    text = moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    utc = moment.replace(microsecond=0, tzinfo=UTC)
    expected = tuple(
        (f"{local:%Y%m%d}", f"{local:%Y%m%d%H%M%S}")
        for local in (utc.astimezone(zone) for zone in SERVICE_ZONES)
    )
    assert service_times(text) == expected


@given(st.text(), st.text())
def test_an_objects_url_is_its_bucket_and_key_percent_encoded(bucket: str, key: str) -> None:
    # object_url skips quote() for keys that are their own encoding; the URL must be the same.
    from urllib.parse import quote

    from reconciler.bucket import Place

    place = Place("s3.cn-north-1.jdcloud-oss.com", bucket, "https://host")
    assert place.object_url(key) == f"https://host/{quote(bucket)}/{quote(key)}"


@pytest.mark.parametrize(
    "url",
    [
        "http://AKID:hunter2pass@127.0.0.1:99999",  # a bad port
        "ftp://AKID:hunter2pass@127.0.0.1:9",  # another scheme
        "http://AKID:hunter2pass@:9",  # no host
        "http://AKID:hunter2pass@127.0.0.1:9/path",
        "http://AKID:hunter2pass@127.0.0.1:9 ",
        "http://:hunter2pass@127.0.0.1:9",
        "//AKID:hunter2pass@127.0.0.1:9",  # no scheme
        "AKID:hunter2pass@127.0.0.1:9",
        "http:/AKID:hunter2pass@127.0.0.1:9",
        "http:AKID:hunter2pass@127.0.0.1",
    ],
)
def test_a_storage_endpoint_with_a_password_is_refused_without_repeating_it(url: str) -> None:
    from reconciler.bucket import check_storage_endpoint

    with pytest.raises(ValueError) as refused:
        check_storage_endpoint(url)
    assert "hunter2pass" not in str(refused.value) and "AKID" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["http://exa mple.com", "http://127.0.0.1:9\r\nX-Injected: 1", "http://127.0.0.1\t:9"]
)
def test_a_storage_endpoint_with_whitespace_or_controls_is_refused(url: str) -> None:
    from reconciler.bucket import check_storage_endpoint

    with pytest.raises(ValueError, match="whitespace or control characters") as refused:
        check_storage_endpoint(url)
    assert "\r" not in str(refused.value) and "\n" not in str(refused.value)
