"""What every output shares: the output formats, text made safe to show in a terminal, in
Markdown and in GitHub's workflow commands, and JSON documents written as text.

Apart from `report` (the plan and apply reports, which load the planner) so that commands
that only read a state (verify, state list) show their text without loading it.
"""

from __future__ import annotations

import json
import unicodedata
from enum import StrEnum
from json.encoder import encode_basestring as _json_string
from typing import Any

FORMAT_VERSION = 1


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"
    MARKDOWN = "markdown"
    JUNIT = "junit"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


# Characters a terminal or a page would act on instead of showing: C0 and C1 controls and DEL
# (Cc), format characters such as the bidirectional overrides that reorder what is shown and
# zero-width ones that hide text (Cf), line and paragraph separators, lone surrogates.
_UNSHOWN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`, `\\r`, `\\n`,
    `\\x7f`, `\\x9b`, `\\u202e`): a value shown in a terminal can neither move the cursor,
    colour the screen, ring the bell nor split the line it is on."""
    return "".join(_escaped(ch) if unicodedata.category(ch) in _UNSHOWN else ch for ch in text)


_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# What can start Markdown syntax inside a line (a table cell, a sentence): escapes, code spans,
# emphasis, links and images, cell boundaries, strikethrough, GitHub's math and mentions.
_MD_SPECIAL = frozenset("\\`*_[]!|~$@")


def md_text(text: str) -> str:
    """`text` as literal text inside a line of Markdown (CommonMark and GitHub's GFM), a table
    cell too: controls made visible, `& < >` as entities (no HTML, comment or autolink can
    start) and the characters in `_MD_SPECIAL` backslash-escaped (no link, image, emphasis,
    code span, strikethrough or cell boundary either). `. - : / ( )` stay as they are: inside
    a line they start nothing."""
    return "".join(
        _MD_ENTITIES.get(ch) or (f"\\{ch}" if ch in _MD_SPECIAL else ch) for ch in visible(text)
    )


# --- GitHub Actions workflow commands ------------------------------------------------------


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotation(
    level: str,
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    column: int | None = None,
    title: str | None = None,
) -> str:
    """One `::error file=…,line=…::message` line (level: error, warning or notice)."""
    properties = []
    if file is not None:
        properties.append(f"file={_gh_property(file)}")
    if line is not None:
        properties.append(f"line={line}")
    if column is not None:
        properties.append(f"col={column}")
    if title is not None:
        properties.append(f"title={_gh_property(title)}")
    joined = (" " + ",".join(properties)) if properties else ""
    return f"::{level}{joined}::{_gh_data(message)}"


def has_space_or_control(text: str) -> bool:
    """Whether `text` holds whitespace, a C0 control or DEL: nothing an endpoint URL may hold
    (a line break in one could add a header to a request, or a line to a log)."""
    return any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def without_user_info(url: str) -> str:
    """`url` with all it holds before its last `@` written as `***` (a scheme's `://` kept): a
    URL given by mistake with a user name and password is shown in messages without them,
    however malformed (no scheme, `http:/user:pw@host`). An `@` in a path hides more than
    the user info; never less."""
    if "@" not in url:
        return url
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    return f"{scheme}{separator}***@{rest.rpartition('@')[2]}"


#: Markdown lists longer than this are folded into a <details> block.
MARKDOWN_COLLAPSE_AFTER = 10


# --- JSON documents -----------------------------------------------------------------------


def json_text(document: Any) -> str:
    """`json.dumps(document, indent=2, ensure_ascii=False)`: the same text, in less than half
    the time (json indents in pure Python, one generator per value: verify's report of 3,000
    tasks took 0.05 s). Values other than dicts, lists, strings, ints, bools and None, and keys
    other than strings, are left to json itself."""
    try:
        return json_value(document)
    except UnusualJson:
        return json.dumps(document, indent=2, ensure_ascii=False)


class UnusualJson(Exception):
    """A value json_value leaves to json itself (a float, a key that is no string...)."""


def json_value(value: Any, newline: str = "\n") -> str:
    """`value` as json_text writes it at the indentation that `newline` ends with (a line
    break and two spaces per level). Each container is one join: the fewer Python calls per
    value, the faster. UnusualJson for what json_text leaves to json."""
    if isinstance(value, str):
        return _json_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    inner = newline + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnusualJson
            if isinstance(item, str):
                items.append(_json_string(key) + ": " + _json_string(item))
            else:
                items.append(_json_string(key) + ": " + json_value(item, inner))
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return (
            "[" + inner + ("," + inner).join([json_value(v, inner) for v in value]) + newline + "]"
        )
    raise UnusualJson
