"""The manifest rules: the JSON Schema file, its project keywords, and human messages for each rule."""

from __future__ import annotations

import copy
import difflib
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, reduce
from importlib import resources
from typing import Any

import jsonschema
import regress
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator

from reconciler.manifests import (
    KINDS,
    ClipSet,
    DocPath,
    Manifest,
    expand_set,
)
from reconciler.problems import Location, Problem, field_path
from reconciler.record_times import (  # re-exported: schema users read times too
    RECORD_TIME,
    parse_record_time,
    record_time_problem,
)
from reconciler.record_times import (
    utc_text as _utc_text,
)

SCHEMA_RESOURCE = "schemas/record-task.schema.json"
# Matched with fullmatch: `$` in a Python pattern also matches before a final newline. A time is
# UTC (`Z`) or carries its offset (`+08:00`); the request always carries the UTC form.
# A time written without its zone (or with a space for the 'T'): what a local time looks like.
_NAIVE_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})", re.ASCII)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def schema_text() -> str:
    """The schema file as shipped inside the package (what `reconciler schema` prints)."""
    return resources.files("reconciler").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


@cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


def _shown(text: str, moment: datetime) -> str:
    """A time as written, with its UTC reading when it was written with an offset."""
    return text if text.endswith("Z") else f"{text} ({_utc_text(moment)})"


def _time_rule(value: Any, rule: str) -> str:
    """The format rule for a time; a time written without its zone gets its UTC reading."""
    naive = _NAIVE_TIME.fullmatch(value) if isinstance(value, str) else None
    if naive is None:
        return _with_hidden(value, rule)
    utc = f"{naive.group(1)}T{naive.group(2)}"
    return (
        f"{value!r} has no offset, so it could be any zone's time: write {utc}Z if it is UTC, "
        f"or add its offset (like {utc}+08:00 for Beijing time)"
    )


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s"]
    if secs == 0 and (hours or minutes):
        parts[2] = ""
    return " ".join(part for part in parts if part)


# --- patterns, as ECMA-262 reads them ---------------------------------------------------------

# Draft 2020-12 patterns are ECMA-262 regular expressions with the `u` flag (Unicode code
# points), which is how editors and check-jsonschema match them. Python's `re` differs: its `$`
# also matches before a final newline, so a value written as a YAML `|` block scalar would pass.
_COMPILED: dict[str, regress.Regex] = {}


def ecma_match(pattern: str, text: str) -> bool:
    """Whether `pattern` finds a match in `text` under ECMA-262 (`u` flag) semantics."""
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = regress.Regex(pattern, flags="u")
    try:
        return compiled.find(text) is not None
    except UnicodeEncodeError:  # a lone surrogate: not Unicode text, so never a valid value
        return False


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not ecma_match(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Characters a reviewer cannot see: Unicode's Default_Ignorable_Code_Point (zero-width spaces,
# bidi controls, BOM, fillers, variation selectors, tags) and the interlinear annotation
# controls U+FFF9..U+FFFB. The schema's patterns refuse the same ranges.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_CONTROL_NAMES = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return"}


def _named(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def _unseen(char: str) -> str | None:
    """What `char` is when a reader cannot see it for what it is (None for visible ones)."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return _CONTROL_NAMES.get(char, f"the control character U+{code:04X}")
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate U+{code:04X} (not Unicode text)"
    if char in "\u2028\u2029":
        return f"the line separator {_named(char)}"
    if any(low <= code <= high for low, high in _INVISIBLE_RANGES):
        return f"the invisible character {_named(char)}"
    return None


def _odd_space(char: str) -> str | None:
    """Whitespace other than a plain space (a no-break space looks like one)."""
    return f"the whitespace character {_named(char)}" if char.isspace() and char != " " else None


def hidden_character(text: str) -> str | None:
    """What is wrong with `text` that its printed form hides, or None: a final line break (a
    YAML block scalar's) or the first control, invisible or unusual whitespace character."""
    if text.endswith(("\n", "\r")):
        return (
            "ends with a line break (a YAML block scalar written with '|' or '>' keeps its "
            "last one: write '|-' or '>-', or put the value on the key's line)"
        )
    # Whitespace last: free text may hold a no-break space, never a control character.
    for kind in (_unseen, _odd_space):
        for index, char in enumerate(text):
            what = kind(char)
            if what is not None:
                return f"contains {what} at position {index + 1}"
    return None


# --- the project's own keywords -------------------------------------------------------------


def _calendar_time(
    validator: Validator, enabled: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    in_format = isinstance(instance, str) and RECORD_TIME.fullmatch(instance) is not None
    problem = record_time_problem(instance) if enabled and in_format else None
    if problem is not None:
        yield ValidationError(problem)


def _segments(
    validator: Validator, rules: Mapping[str, int], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list):
        return
    spans: list[tuple[int, datetime, datetime]] = []
    for index, segment in enumerate(instance):
        if not isinstance(segment, dict):
            return
        start = segment.get("startTime")
        end = segment.get("endTime")
        if not (isinstance(start, str) and isinstance(end, str)):
            return
        start_at, end_at = parse_record_time(start), parse_record_time(end)
        if start_at is None or end_at is None:
            return  # the format or calendar rule already reports it
        if end_at <= start_at:
            yield ValidationError(
                f"endTime {_shown(end, end_at)} is not after startTime {_shown(start, start_at)}; "
                "a segment must end after it starts",
                path=(index, "endTime"),
            )
            return
        if spans and start_at < spans[-1][2]:
            previous = spans[-1]
            yield ValidationError(
                f"segment {index + 1} starts at {_shown(start, start_at)}, before segment "
                f"{previous[0] + 1} ends at {_shown(instance[previous[0]]['endTime'], previous[2])}; "
                "segments must be in ascending order and must not overlap",
                path=(index, "startTime"),
            )
            return
        spans.append((index, start_at, end_at))
    if not spans:
        return
    total = sum(int((end - start).total_seconds()) for _, start, end in spans)
    minimum = rules.get("minTotalSeconds")
    if minimum is not None and total < minimum:
        yield ValidationError(
            f"total length {_duration(total)} is below the {_duration(minimum)} minimum "
            "(the segments' durations added up)"
        )
    span = int((spans[-1][2] - spans[0][1]).total_seconds())
    maximum = rules.get("maxSpanSeconds")
    if maximum is not None and span > maximum:
        yield ValidationError(
            f"spans {_duration(span)} from the first startTime to the last endTime; "
            f"at most {_duration(maximum)} is allowed"
        )


# The taskExternalId prefix of ids reconciler generates (state.model.GENERATED_ID_PREFIX).
_GENERATED_ID_PREFIX = "rc-"


def _own_external_id(
    validator: Validator, enabled: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    # A manifest's rule, not the API's: the sandbox (check_spec) accepts the ids we generate.
    if enabled and isinstance(instance, str) and instance.startswith(_GENERATED_ID_PREFIX):
        yield ValidationError(
            f"{instance!r} must not start with {_GENERATED_ID_PREFIX!r}: reconciler sends "
            f"{_GENERATED_ID_PREFIX} and the task's hash for a manifest that sets no "
            "taskExternalId, so callbacks can tell the two apart; choose another id"
        )


def _unique_file_types(
    validator: Validator, enabled: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not (enabled and isinstance(instance, str)):
        return
    seen: set[str] = set()
    for kind in instance.lower().split(";"):
        if kind in seen:
            yield ValidationError(
                f"'{kind}' is given twice in {instance!r}; each file type (ts, flv, mp4) "
                "may appear once"
            )
            return
        seen.add(kind)


def _placeholders(
    validator: Validator, allowed: list[str], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, str):
        return
    choices = " ".join(f"{{{name}}}" for name in allowed)
    for name in _PLACEHOLDER.findall(instance):
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            suggestion = f" (did you mean {{{hint[0]}}}?)" if hint else ""
            yield ValidationError(f"unknown placeholder {{{name}}}{suggestion}; allowed: {choices}")
    if "{" in _PLACEHOLDER.sub("", instance) or "}" in _PLACEHOLDER.sub("", instance):
        yield ValidationError(
            f"{instance!r} has an unmatched '{{' or '}}'; placeholders are written {{Name}}, "
            f"one of {choices}"
        )


def _substitution(
    validator: Validator, enabled: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """A notify URL's `${NAME}`s are well formed (what they stand for is read at plan time)."""
    from reconciler.notify import template_problem

    problem = template_problem(instance) if enabled and isinstance(instance, str) else None
    if problem is not None:
        yield ValidationError(problem)


class _SeeAlso(ValidationError):
    """An error about one value that names another (its first use): `{at}` in the message
    becomes where that other value is written."""

    def __init__(self, message: str, *, path: DocPath, other: DocPath) -> None:
        super().__init__(message, path=path)
        self.depth = len(path)
        self.other = other  # relative to the same instance as `path`


def _unique_clip_names(
    validator: Validator, enabled: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not (enabled and isinstance(instance, list)):
        return
    first: dict[str, int] = {}
    for index, clip in enumerate(instance):
        name = clip.get("name") if isinstance(clip, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            yield _SeeAlso(
                f"clip name '{name}' is already used in this set at {{at}}; clip names must be "
                "unique within a set",
                path=(index, "name"),
                other=(first[name], "name"),
            )
        else:
            first[name] = index


def _full_names(
    validator: Validator, rules: Mapping[str, int], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """Each clip is named <set>-<clip>; that name obeys the length rule of every name."""
    if not isinstance(instance, dict):
        return
    metadata, spec = instance.get("metadata"), instance.get("spec")
    set_name = metadata.get("name") if isinstance(metadata, dict) else None
    clips = spec.get("clips") if isinstance(spec, dict) else None
    maximum = rules["maxLength"]
    if not (isinstance(set_name, str) and isinstance(clips, list)) or len(set_name) > maximum:
        return  # the name rule itself reports a set name that is too long
    named = [
        (index, clip["name"])
        for index, clip in enumerate(clips)
        if isinstance(clip, dict) and isinstance(clip.get("name"), str)
    ]
    full_names = [(index, f"{set_name}-{name}") for index, name in named]
    too_long = [(index, full) for index, full in full_names if len(full) > maximum]
    if len(named) > 1 and len(too_long) == len(named):
        longest = max((full for _, full in too_long), key=len)
        yield ValidationError(
            f"with this name ({len(set_name)} characters) every clip's full name "
            f"<set>-<clip> is over {maximum} characters (the longest: '{longest}', "
            f"{len(longest)}); shorten the set's name",
            path=("metadata", "name"),
        )
        return
    for index, full in too_long:
        yield ValidationError(
            f"the clip's full name '{full}' is {len(full)} characters long; at most {maximum} "
            "allowed (the set's name, '-', the clip's name)",
            path=("spec", "clips", index, "name"),
        )


# --- standard keywords, re-stated so each error names the field it is about ----------------

_STANDARD = Draft202012Validator.VALIDATORS


def _required(
    validator: Validator, required: list[str], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if isinstance(instance, dict):
        for name in required:
            if name not in instance:
                yield ValidationError("required field is missing", path=(name,))


def _additional_properties(
    validator: Validator, extra: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if extra is not False or not isinstance(instance, dict):
        yield from _STANDARD["additionalProperties"](validator, extra, instance, schema)
        return
    known = list(schema.get("properties", {}))
    for name in instance:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            yield ValidationError(
                f"unknown field '{name}'; {suggestion}allowed here: {', '.join(known)}",
                path=(name,),
            )


RecordTaskValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "required": _required,
        "additionalProperties": _additional_properties,
        "x-reconciler-calendarTime": _calendar_time,
        "x-reconciler-segments": _segments,
        "x-reconciler-uniqueFileTypes": _unique_file_types,
        "x-reconciler-ownExternalId": _own_external_id,
        "x-reconciler-placeholders": _placeholders,
        "x-reconciler-uniqueClipNames": _unique_clip_names,
        "x-reconciler-fullNames": _full_names,
        "x-reconciler-substitution": _substitution,
    },
)


@dataclass(frozen=True, slots=True)
class _Rules:
    """A schema's validator, and the same rules compiled into one yes/no check: most manifests
    are valid, and for those the check alone decides; the validator's walk, which says why, runs
    only for the rest."""

    validator: Validator
    valid: Callable[[Any], bool]

    def errors(self, instance: Any) -> Iterator[ValidationError]:
        if not self.valid(instance):
            yield from self.validator.iter_errors(instance)


def _rules(schema: Mapping[str, Any]) -> _Rules:
    # The schema file is checked against the Draft 2020-12 meta-schema by the tests, not on
    # every start. Resolving `$ref`s on every validation is a third of its cost; the schema's
    # references are local and not recursive, so they are resolved once here.
    validator: Validator = RecordTaskValidator(_inline_refs(schema, schema))
    valid = _compile(validator.schema, validator)
    if valid is None:  # a keyword the compiler does not know: the walk decides every time
        return _Rules(
            validator, lambda instance: next(validator.iter_errors(instance), None) is None
        )
    return _Rules(validator, valid)


@cache
def _validator() -> _Rules:
    return _rules(load_schema())


@cache
def _set_validator() -> _Rules:
    """The schema with a clip's spec fields left open: a set's clips are checked merged with
    the template, as RecordTasks (so each problem is found once, and named for its clips)."""
    schema = copy.deepcopy(load_schema())
    fields = schema["$defs"]["spec"]["properties"]
    clip = schema["$defs"]["clip"]
    clip["properties"] = {
        name: True if name in fields else rule for name, rule in clip["properties"].items()
    }
    return _rules(schema)


# --- the same rules as one yes/no check -------------------------------------------------------

Check = Callable[[Any], bool]
_PYTHON_TYPES: dict[str, Check] = {
    # As Draft 2020-12's type checker reads them.
    "string": lambda value: isinstance(value, str),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "null": lambda value: value is None,
    "boolean": lambda value: isinstance(value, bool),
}  # "number" and "integer" are left to the validator (Decimal, 1.0 and such)


def _compile(schema: Any, validator: Validator) -> Check | None:
    """Whether an instance is valid under `schema` (ref-free), as `validator` would find it:
    True exactly when its walk yields no error. None when the schema uses a keyword of the
    validator's that this does not compile, such as `prefixItems` or `patternProperties` (which
    would change what `items` and `additionalProperties` see); keywords it ignores are ignored."""
    if isinstance(schema, bool):
        return lambda instance: schema
    checks: list[Check] = []
    known = type(validator).VALIDATORS
    for keyword, value in schema.items():
        if keyword not in known or keyword in ("then", "else"):
            continue  # annotations; `then`/`else` are read with their `if`
        check = _compile_keyword(keyword, value, schema, validator)
        if check is None:
            return None
        checks.append(check)
    start: Check = _anything
    return reduce(_both, checks, start)


def _anything(instance: Any) -> bool:
    return True


def _both(first: Check, second: Check) -> Check:
    if first is _anything:
        return second
    return lambda instance: first(instance) and second(instance)


def _compile_keyword(
    keyword: str, value: Any, schema: Mapping[str, Any], validator: Validator
) -> Check | None:
    if keyword.startswith("x-reconciler-"):
        rule = type(validator).VALIDATORS[keyword]
        return lambda instance: next(iter(rule(validator, value, instance, schema)), None) is None
    if keyword == "type":
        return _PYTHON_TYPES.get(value) if isinstance(value, str) else None
    if keyword == "const":
        return (lambda instance: instance == value) if isinstance(value, str) else None
    if keyword == "pattern":
        return lambda instance: not isinstance(instance, str) or ecma_match(value, instance)
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        return _compile_size(keyword, value)
    if keyword == "required":
        names = tuple(value)
        return lambda instance: (
            not isinstance(instance, dict) or all(name in instance for name in names)
        )
    if keyword == "properties":
        return _compile_properties(value, validator)
    if keyword == "additionalProperties":
        return _compile_additional(value, schema, validator)
    if keyword in ("propertyNames", "items"):
        each = _compile(value, validator)
        if each is None:
            return None
        kind = dict if keyword == "propertyNames" else list
        return lambda instance: not isinstance(instance, kind) or all(map(each, instance))
    if keyword == "if":
        return _compile_condition(value, schema, validator)
    return None


def _compile_size(keyword: str, bound: Any) -> Check | None:
    if not isinstance(bound, int):
        return None
    kind = str if keyword.endswith("Length") else list
    if keyword.startswith("min"):
        return lambda instance: not isinstance(instance, kind) or len(instance) >= bound
    return lambda instance: not isinstance(instance, kind) or len(instance) <= bound


def _compile_properties(properties: Mapping[str, Any], validator: Validator) -> Check | None:
    compiled = [(name, _compile(rule, validator)) for name, rule in properties.items()]
    if any(check is None for _, check in compiled):
        return None
    checks = [(name, check) for name, check in compiled if check is not None]

    def valid(instance: Any) -> bool:
        if isinstance(instance, dict):
            for name, check in checks:
                if name in instance and not check(instance[name]):
                    return False
        return True

    return valid


def _compile_additional(
    extra: Any, schema: Mapping[str, Any], validator: Validator
) -> Check | None:
    known = frozenset(schema.get("properties", {}))
    each = _compile(extra, validator)
    if each is None:
        return None
    return lambda instance: (
        not isinstance(instance, dict)
        or all(each(instance[name]) for name in instance if name not in known)
    )


def _compile_condition(
    condition: Any, schema: Mapping[str, Any], validator: Validator
) -> Check | None:
    test = _compile(condition, validator)
    then = _compile(schema.get("then", True), validator)
    otherwise = _compile(schema.get("else", True), validator)
    if test is None or then is None or otherwise is None:
        return None
    return lambda instance: then(instance) if test(instance) else otherwise(instance)


def _inline_refs(node: Any, root: Mapping[str, Any]) -> Any:
    """`node` with every local `{"$ref": "#/$defs/x", ...}` replaced by that definition."""
    if isinstance(node, list):
        return [_inline_refs(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    inlined = {key: _inline_refs(value, root) for key, value in node.items() if key != "$ref"}
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        target = _inline_refs(root["$defs"][reference.removeprefix("#/$defs/")], root)
        return {**target, **inlined}
    return inlined


# --- turning errors into problems -------------------------------------------------------------

_TYPE_NAMES = {
    "string": "text",
    "object": "a mapping",
    "array": "a list",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"text {value!r}"


def _describe(error: ValidationError) -> tuple[DocPath, str]:
    """The path an error is about and the message a user can act on."""
    path: DocPath = tuple(error.absolute_path)
    keyword, expected = error.validator, error.validator_value
    value: Any = error.instance
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    if "propertyNames" in error.relative_schema_path:
        # jsonschema reports a bad key at its mapping's path; point at the key itself.
        rule = schema.get("patternErrorMessage") or error.message
        hidden = hidden_character(value) if isinstance(value, str) else None
        return (*path, str(value)), f"key {value!r}{f' {hidden}' if hidden else ''}: {rule}"
    if keyword == "type":
        wanted = _TYPE_NAMES.get(str(expected), str(expected))
        message = f"must be {wanted}, not {_kind_of(value)}"
        if expected == "string" and isinstance(value, int | float | bool):
            message += " (put it in quotes to make it text)"
        return path, message
    if keyword == "const":
        return path, f"must be {expected!r}, not {_kind_of(value)}"
    if keyword == "pattern":
        rule = schema.get("patternErrorMessage", f"must match {expected}")
        if schema.get("x-reconciler-calendarTime"):
            return path, _time_rule(value, rule)
        if schema.get("x-reconciler-substitution") and str(value).lower().startswith("https://"):
            return path, (
                f"{value!r} is an https:// URL: JD Cloud posts record callbacks to http:// URLs "
                "only (its rule for a notify URL), so write it with http://"
            )
        lower = value.lower() if isinstance(value, str) else value
        if expected == _host_pattern() and lower != value and ecma_match(expected, lower):
            return path, (
                f"{value!r} must be written in lower case: write {lower} (DNS ignores case, so "
                "it is the same host; one spelling keeps one identity per clip)"
            )
        return path, _with_hidden(value, rule)
    if keyword in ("minLength", "maxLength"):
        bound = "at least" if keyword == "minLength" else "at most"
        return path, f"is {len(value)} characters long; {bound} {expected} allowed"
    if keyword in ("minItems", "maxItems"):
        bound = "at least" if keyword == "minItems" else "at most"
        return path, f"has {len(value)} entries; {bound} {expected} allowed"
    return path, error.message


@cache
def _host_pattern() -> str:
    return str(load_schema()["$defs"]["hostName"]["pattern"])


def _with_hidden(value: Any, rule: str) -> str:
    """`'value' rule`, saying first what the value hides when that is why it breaks the rule."""
    hidden = hidden_character(value) if isinstance(value, str) else None
    return f"{value!r} {hidden}; it {rule}" if hidden else f"{value!r} {rule}"


_MISSING = object()


def _lookup(doc: Any, path: DocPath) -> Any:
    for part in path:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return doc


def _errors(doc: Any) -> list[ValidationError]:
    return list(_validator().errors(doc))


@dataclass(frozen=True, slots=True)
class _Finding:
    path: DocPath  # in the manifest's doc
    message: str
    key: bool  # point at the key (a whole mapping or list, a missing or unknown field)
    keyword: str


def _kind_problem(doc: Any) -> str | None:
    """Why a document's `kind` is none that reconciler reads (None when it is one, or missing:
    the schema says a missing one is). The kinds are named closest first; a document of another
    kind gets no errors about fields it was never meant to have."""
    kind = doc.get("kind", KINDS[0]) if isinstance(doc, dict) else KINDS[0]
    if kind in KINDS:
        return None
    written = str(kind).lower()
    ordered = sorted(
        KINDS, key=lambda name: -difflib.SequenceMatcher(None, written, name.lower()).ratio()
    )
    what = repr(kind) if isinstance(kind, str) else _kind_of(kind)
    case = " (kinds are case-sensitive)" if written in (name.lower() for name in KINDS) else ""
    return f"unknown kind {what}{case}; the kinds are {', '.join(ordered)} (closest first)"


def _findings(manifest: Manifest, rules: _Rules) -> Iterator[_Finding]:
    wrong_kind = _kind_problem(manifest.doc)
    if wrong_kind is not None:
        yield _Finding(("kind",), wrong_kind, False, "kind")
        return
    for error in rules.errors(manifest.doc):
        path, message = _describe(error)
        if isinstance(error, _SeeAlso):
            other = (*path[: len(path) - error.depth], *error.other)
            message = message.replace("{at}", str(manifest.where(other)))
        # Point at the key when the error is about a key or a whole mapping or list (or a field
        # that is missing); at the value itself when a scalar is wrong.
        target = _lookup(manifest.doc, path)
        about_key = (
            error.validator == "additionalProperties"
            or "propertyNames" in error.relative_schema_path
            or target is _MISSING
            or isinstance(target, dict | list)
        )
        yield _Finding(path, message, about_key, str(error.validator))


def check_manifest(manifest: Manifest) -> list[Problem]:
    """Every rule the manifest breaks, each with its position and field path (empty when valid).

    A clip of a RecordTaskSet is checked with its whole set (whether the template's values are
    used depends on the other clips): check_manifests checks a file's clips at once.
    """
    if manifest.clip is not None:
        siblings = expand_set(manifest.clip.set.manifest)
        verdicts = check_manifests(siblings)
        index = manifest.clip.index
        return next(
            list(found)
            for clip, found in zip(siblings, verdicts.per_manifest, strict=True)
            if clip.clip is not None and clip.clip.index == index
        )
    found = _findings(manifest, _validator())
    return sorted(manifest.problem(item.path, item.message, key=item.key) for item in found)


@dataclass(frozen=True)
class Verdicts:
    """What check_manifests found: every problem once, and each manifest's own problems."""

    problems: list[Problem]
    per_manifest: list[tuple[Problem, ...]]  # in the order the manifests were given


def check_manifests(manifests: Sequence[Manifest]) -> Verdicts:
    """Check manifests as one file gives them; the clips of a set are checked together, so a
    problem of the template is reported once, naming the clips it affects."""
    problems: list[Problem] = []
    per_manifest: list[tuple[Problem, ...]] = []
    start = 0
    while start < len(manifests):
        first = manifests[start]
        end = start + 1
        if first.clip is None:
            own = tuple(check_manifest(first))
            problems.extend(own)
            per_manifest.append(own)
        else:
            while end < len(manifests) and _same_set(manifests[end], first.clip.set):
                end += 1
            found, each = _check_clips(manifests[start:end], first.clip.set)
            problems.extend(found)
            per_manifest.extend(each)
        start = end
    return Verdicts(problems, per_manifest)


def _same_set(manifest: Manifest, clip_set: ClipSet) -> bool:
    return manifest.clip is not None and manifest.clip.set is clip_set


# How many clip names one problem lists before it says how many more.
_NAMES_SHOWN = 10


class _Affected:
    """One problem found in a set, and the clips it affects (each once, in order)."""

    __slots__ = ("clips", "final", "location", "message", "path")

    def __init__(self, path: DocPath, location: Location, message: str, *, final: bool = False):
        self.path, self.location, self.message, self.final = path, location, message, final
        self.clips: dict[int, Manifest] = {}

    def add(self, clip: Manifest) -> None:
        assert clip.clip is not None
        self.clips.setdefault(clip.clip.index, clip)

    def text(self, total: int) -> str:
        """The message; a template's value names the clips it affects (or says none uses it)."""
        if self.final or self.path[:2] != ("spec", "template") or len(self.path) < 3:
            return self.message
        if not self.clips:
            return f"{self.message} (no clip uses it: each sets its own)"
        titles = [clip.clip.title for clip in self.clips.values() if clip.clip is not None]
        return f"{self.message} ({_affects(titles, total)})"


def _affects(titles: list[str], total: int) -> str:
    shown = titles[:_NAMES_SHOWN]
    if len(titles) > len(shown):
        listed = f"{', '.join(shown)} and {len(titles) - len(shown)} more"
    elif len(shown) > 1:
        listed = f"{', '.join(shown[:-1])} and {shown[-1]}"
    else:
        listed = shown[0]
    if len(titles) == total == 2:
        return f"affects both clips: {listed}"
    if len(titles) == total > 2:
        return f"affects all {total} clips: {listed}"
    return f"affects clip{'s' if len(titles) > 1 else ''} {listed}"


def _entry_of(path: DocPath) -> int | None:
    """The clip entry a path in a set's document is inside, if any."""
    if len(path) >= 3 and path[:2] == ("spec", "clips") and isinstance(path[2], int):
        return path[2]
    return None


def _check_clips(
    clips: Sequence[Manifest], clip_set: ClipSet
) -> tuple[list[Problem], list[tuple[Problem, ...]]]:
    """The problems of one set's clips: the set as written, then every clip merged with the
    template and checked as the RecordTask it stands for (so every rule holds for every clip).

    A problem is reported where the offending value is written: in a clip's entry, or in the
    template, once, naming the clips that use the value. A field neither writes is missing
    from the clip (or from the template, when no clip writes it).
    """
    written = clip_set.manifest
    found: dict[tuple[DocPath, str], _Affected] = {}
    at_path: dict[DocPath, list[_Affected]] = {}
    for item in _findings(written, _set_validator()):
        if (item.path, item.message) not in found:
            location = written.where(item.path, key=item.key)
            affected = found[(item.path, item.message)] = _Affected(
                item.path, location, item.message
            )
            at_path.setdefault(item.path, []).append(affected)

    missing: dict[str, list[Manifest]] = {}
    for clip in clips:
        for item in _findings(clip, _validator()):
            if item.path[:2] == ("metadata", "name"):
                continue  # the set's name, the clip's and their length are checked as written
            if item.keyword == "required" and len(item.path) == 2 and item.path[0] == "spec":
                missing.setdefault(str(item.path[1]), []).append(clip)
                continue
            source = clip.written(item.path)
            same = at_path.get(source)
            if same is None:  # a rule only the merged clip breaks
                known = found.get((source, item.message))
                if known is None:
                    location = clip.where(item.path, key=item.key)
                    known = found[(source, item.message)] = _Affected(
                        source, location, item.message
                    )
                same = [known]
            for affected in same:
                affected.add(clip)

    for name, lacking in missing.items():
        if len(lacking) == len(clips) > 1:
            path: DocPath = ("spec", "template", name)
            affected = _Affected(
                path,
                written.where(path, key=True),
                "required field is missing: neither the template nor any clip sets it",
                final=True,
            )
            found[(path, affected.message)] = affected
            for clip in lacking:
                affected.add(clip)
            continue
        for clip in lacking:
            path = clip.written(("spec", name))
            message = "required field is missing (neither this clip nor the template sets it)"
            affected = found[(path, message)] = _Affected(
                path, clip.where(("spec", name), key=True), message
            )
            affected.add(clip)

    positions = {clip.clip.index: at for at, clip in enumerate(clips) if clip.clip is not None}
    problems: list[Problem] = []
    own: list[list[Problem]] = [[] for _ in clips]
    for affected in found.values():
        problem = Problem(affected.location, field_path(affected.path), affected.text(len(clips)))
        problems.append(problem)
        entry = _entry_of(affected.path)
        if entry is not None:
            targets = [positions[entry]] if entry in positions else []
        elif affected.clips:
            targets = [positions[index] for index in affected.clips]
        else:  # the set's own part (its name, labels, a template value no clip uses)
            targets = list(range(len(clips)))
        for target in targets:
            own[target].append(problem)
    return problems, [tuple(sorted(each)) for each in own]


def check_spec(spec: Any) -> list[tuple[str, str]]:
    """Rules for a bare request body (the sandbox's check): (field path, message) pairs."""
    wrapped = {
        "apiVersion": "reconciler/v1",
        "kind": "RecordTask",
        "metadata": {"name": "request"},
        "spec": spec,
    }
    found = []
    for error in _errors(wrapped):
        if error.validator == "x-reconciler-ownExternalId":
            continue  # the API takes any id; only a manifest may not use ours
        path, message = _describe(error)
        found.append((field_path(path[1:] if path[:1] == ("spec",) else path), message))
    times = spec.get("recordTimes") if isinstance(spec, dict) else None
    for index, segment in enumerate(times if isinstance(times, list) else []):
        for name in ("startTime", "endTime"):
            value = segment.get(name) if isinstance(segment, dict) else None
            if isinstance(value, str) and not value.endswith("Z"):
                moment = parse_record_time(value)
                if moment is not None:  # a manifest may write an offset; a request never does
                    found.append(
                        (
                            field_path(("recordTimes", index, name)),
                            f"{value!r} must be sent as its UTC form, {_utc_text(moment)}",
                        )
                    )
    return sorted(found)
