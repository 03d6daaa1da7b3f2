"""RecordNotifyConfig: a publish domain's record notify URL, declared, read, compared and set.

A notify URL is a declarative resource, not a task sent once (DESIGN §7a): plan reads the URL
set now and shows `update` or `unchanged`; apply reads it again and sets it when it differs.
Nothing about it is written to the state.

The URL may name environment variables, `${NAME}`, substituted when plan and apply run (never
when validating). `$${` writes a literal `${`; a `$` anywhere else is itself. A substituted value
is a secret (the callback token): it never appears in an output, a plan file, a message or a
log. Every substituted span is shown as `***`, and so is any copy of a value in what the server
says.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from reconciler.manifests import NOTIFY_KIND, Manifest
from reconciler.plan import PlanAction, PlanError
from reconciler.problems import Location, Problem

if TYPE_CHECKING:  # the HTTP client loads only when a URL is read or set
    from reconciler.client import NotifyConfigRead, SubmitResult
    from reconciler.tasks import TaskSet

MASK = "***"
# `$${` first (a literal `${`), then a variable, then any other `${`: a mistake.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
_FIELD = "spec.notifyUrl"


# --- the template -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variable:
    """`${name}` in a notify URL."""

    name: str


Part = str | Variable


class TemplateError(ValueError):
    """A `${` that starts no variable; the message says how to write one."""


def template_parts(template: str) -> tuple[Part, ...]:
    """The literal text and the variables of a notify URL, in order (`$${` read as `${`)."""
    parts: list[Part] = []
    text = ""
    at = 0
    for match in _TOKEN.finditer(template):
        text += template[at : match.start()]
        at = match.end()
        if match.group(0) == "$${":
            text += "${"
        elif match.group(1) is not None:
            if text:
                parts.append(text)
            parts.append(Variable(match.group(1)))
            text = ""
        else:
            raise TemplateError(
                f"'${{' at position {match.start() + 1} starts no variable: write ${{NAME}} "
                "(letters, digits and '_', not starting with a digit), or '$${' for a literal "
                "'${'"
            )
    text += template[at:]
    if text:
        parts.append(text)
    return tuple(parts)


def template_problem(template: str) -> str | None:
    """Why `template` is no notify URL template (the schema's x-reconciler-substitution)."""
    try:
        template_parts(template)
    except TemplateError as error:
        return str(error)
    return None


def variables(template: str) -> tuple[str, ...]:
    """The names of the variables a (valid) template uses, each once, in order."""
    names = [part.name for part in template_parts(template) if isinstance(part, Variable)]
    return tuple(dict.fromkeys(names))


def masked_template(template: str) -> str:
    """The URL as outputs show it: every variable as `***` (`$${` as the `${` it writes)."""
    return "".join(part if isinstance(part, str) else MASK for part in template_parts(template))


class SubstitutionError(Exception):
    """A variable of a notify URL that cannot be substituted; names it, never a value."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"${{{variable}}} {reason}")
        self.variable = variable


@dataclass(frozen=True)
class Substituted:
    """A notify URL with its variables substituted: `url` is what is sent (a secret), `values`
    the substituted values (masked wherever they appear)."""

    url: str = field(repr=False)
    values: tuple[str, ...] = field(repr=False)


def substitute(template: str, environ: Mapping[str, str]) -> Substituted:
    """`template` with each `${NAME}` replaced by the environment's NAME.

    SubstitutionError for a variable that is unset, empty, or whose value would make the URL
    another one (a character a URL cannot hold: whitespace, a control or non-ASCII character).
    """
    pieces: list[str] = []
    values: list[str] = []
    for part in template_parts(template):
        if isinstance(part, str):
            pieces.append(part)
            continue
        value = environ.get(part.name)
        if value is None:
            raise SubstitutionError(part.name, "is not set in the environment")
        if not value:
            raise SubstitutionError(part.name, "is set but empty")
        if any(not "!" <= char <= "~" for char in value):
            raise SubstitutionError(
                part.name,
                "holds a character a URL cannot hold (whitespace, a control or a non-ASCII "
                "character; percent-encode it); its value is not shown",
            )
        pieces.append(value)
        values.append(value)
    return Substituted("".join(pieces), tuple(dict.fromkeys(values)))


def mask_values(text: str, values: Iterable[str]) -> str:
    """`text` with every copy of each value as `***` (the longest first)."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return text


def mask_current(current: str, template: str, values: Iterable[str] = ()) -> str:
    """A URL read from JD Cloud, as outputs may show it.

    When it has the template's shape (its literal text, in order), the spans where the template
    has variables are `***`: the URL now set is shown as the one to set would be. Otherwise it
    may hold a token nobody here knows of: only its origin (`http://host:port`) is shown, the
    rest as `***`. Any copy of a substituted value is `***` in both cases.
    """
    parts = template_parts(template)
    pattern = "".join(re.escape(part) if isinstance(part, str) else "(.+?)" for part in parts)
    if re.fullmatch(pattern, current, re.DOTALL):
        return mask_values(masked_template(template), values)
    try:
        split = urlsplit(current)
    except ValueError:
        return MASK
    origin = split.netloc.rpartition("@")[2]
    if not split.scheme or not origin:
        return MASK
    rest = current.partition(split.netloc)[2]
    shown = f"{split.scheme}://{origin}" + (f"/{MASK}" if rest else "")
    return mask_values(shown, values)


# --- the manifests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """One valid RecordNotifyConfig manifest: the domain, and the URL as written."""

    name: str
    publish_domain: str
    notify_url: str  # the template, with its `${NAME}`s
    location: Location
    name_location: Location
    domain_location: Location
    url_location: Location
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.location.file


def config_from_manifest(manifest: Manifest) -> NotifyConfig:
    """The NotifyConfig of a manifest that passed check_manifest."""
    doc = manifest.doc
    return NotifyConfig(
        name=doc["metadata"]["name"],
        publish_domain=doc["spec"]["publishDomain"],
        notify_url=doc["spec"]["notifyUrl"],
        location=manifest.location,
        name_location=manifest.where(("metadata", "name")),
        domain_location=manifest.where(("spec", "publishDomain")),
        url_location=manifest.where(("spec", "notifyUrl")),
        labels=dict(doc["metadata"].get("labels") or {}),
    )


def find_duplicate_configs(configs: Sequence[NotifyConfig]) -> list[tuple[NotifyConfig, Problem]]:
    """Names are unique among the configs, and so are domains (a domain has one notify URL:
    two configs would set it in turn). Each problem is on the later one and names the first."""
    found: list[tuple[NotifyConfig, Problem]] = []
    by_name: dict[str, NotifyConfig] = {}
    by_domain: dict[str, NotifyConfig] = {}
    for config in configs:
        first = by_name.setdefault(config.name, config)
        if first is not config:
            message = (
                f"name '{config.name}' is already used by the {NOTIFY_KIND} at "
                f"{first.name_location}; names must be unique"
            )
            found.append((config, Problem(config.name_location, "metadata.name", message)))
        twin = by_domain.setdefault(config.publish_domain, config)
        if twin is not config:
            message = (
                f"the notify URL of {config.publish_domain} is already declared by "
                f"'{twin.name}' at {twin.domain_location}; a domain has one notify URL: "
                "declare it once"
            )
            found.append((config, Problem(config.domain_location, "spec.publishDomain", message)))
    return found


def substitution_problems(
    configs: Sequence[NotifyConfig], environ: Mapping[str, str]
) -> list[tuple[NotifyConfig, Problem]]:
    """Every variable of the configs' URLs that cannot be substituted now, at the URL's place."""
    found = []
    for config in configs:
        for name in variables(config.notify_url):
            try:
                substitute(f"${{{name}}}", environ)
            except SubstitutionError as error:
                message = f"{error}; plan and apply substitute it, so nothing was read or sent"
                found.append((config, Problem(config.url_location, _FIELD, message)))
    return found


def with_substitution_problems(
    loaded: TaskSet, environ: Mapping[str, str], selector: Mapping[str, str]
) -> TaskSet:
    """`loaded` with the substitution problems of the configs `selector` picks added (for plan
    and apply: validate reads no environment)."""
    found = substitution_problems(selected(loaded.configs, selector), environ)
    if not found:
        return loaded
    extra: dict[Location, list[Problem]] = {}
    for config, problem in found:
        extra.setdefault(config.location, []).append(problem)
    results = [
        replace(result, problems=result.problems + tuple(extra[result.location]))
        if result.location in extra
        else result
        for result in loaded.results
    ]
    problems = sorted([*loaded.problems, *(problem for _, problem in found)])
    return replace(loaded, problems=problems, results=results)


def selected(configs: Sequence[NotifyConfig], selector: Mapping[str, str]) -> list[NotifyConfig]:
    return [
        config
        for config in configs
        if all(config.labels.get(key) == value for key, value in selector.items())
    ]


# --- what is set now ---------------------------------------------------------------------------


class CurrentStatus(StrEnum):
    SET = "set"  # a notify URL is set
    NONE = "none"  # none is set (the GET's 404)
    UNKNOWN = "unknown"  # it could not be read


NO_CREDENTIALS = "no credentials to read it"


@dataclass(frozen=True)
class Current:
    """What is set for one domain, as read. `notify_url` is the raw value (it may hold a
    token): never shown as it is (see mask_current)."""

    status: CurrentStatus
    notify_url: str | None = field(default=None, repr=False)
    reason: str | None = None  # UNKNOWN: why (no credentials, or the failed read)
    stops_run: bool = False  # UNKNOWN after a 401 or an unreachable endpoint


def unknown(reason: str, *, stops_run: bool = False) -> Current:
    return Current(CurrentStatus.UNKNOWN, reason=reason, stops_run=stops_run)


class NotifyClient(Protocol):
    """What reading and setting need of a client (LiveClient)."""

    def get_record_notify_config(self, publish_domain: str) -> NotifyConfigRead: ...

    def set_record_notify_config(self, publish_domain: str, notify_url: str) -> SubmitResult: ...


def read_one(client: NotifyClient, publish_domain: str) -> Current:
    """The domain's notify URL now; a failed read is UNKNOWN, with the error as its reason."""
    from reconciler.client import ApiError, AuthenticationError, EndpointUnreachableError

    try:
        answer = client.get_record_notify_config(publish_domain)
    except (AuthenticationError, EndpointUnreachableError) as error:
        return unknown(str(error), stops_run=True)
    except ApiError as error:
        return unknown(str(error))
    if answer.notify_url is None:
        return Current(CurrentStatus.NONE)
    return Current(CurrentStatus.SET, answer.notify_url)


def read_current(client: NotifyClient, configs: Sequence[NotifyConfig]) -> dict[str, Current]:
    """The notify URL set now for each config's domain. After a 401 or an unreachable endpoint
    the rest are not asked for (each would fail the same way): they are UNKNOWN for that reason."""
    found: dict[str, Current] = {}
    stopped: Current | None = None
    for config in configs:
        domain = config.publish_domain
        found[domain] = stopped or read_one(client, domain)
        if found[domain].stops_run:
            stopped = found[domain]
    return found


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShownCurrent:
    """What is set now, as a plan shows and saves it: masked, never the raw URL."""

    status: CurrentStatus
    notify_url: str | None = None  # SET: masked
    reason: str | None = None  # UNKNOWN: why

    @property
    def text(self) -> str:
        if self.status is CurrentStatus.SET:
            return self.notify_url or ""
        if self.status is CurrentStatus.NONE:
            return "none set"
        return f"unknown ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"status": self.status.value}
        if self.notify_url is not None:
            document["notifyUrl"] = self.notify_url
        if self.reason is not None:
            document["reason"] = self.reason
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ShownCurrent:
        url, reason = document.get("notifyUrl"), document.get("reason")
        return cls(
            CurrentStatus(document["status"]),
            None if url is None else str(url),
            None if reason is None else str(reason),
        )


def shown_current(current: Current, template: str, values: Iterable[str] = ()) -> ShownCurrent:
    values = tuple(values)
    reason = None if current.reason is None else mask_values(current.reason, values)
    if current.status is CurrentStatus.SET and current.notify_url is not None:
        return ShownCurrent(current.status, mask_current(current.notify_url, template, values))
    return ShownCurrent(current.status, reason=reason)


# The actions a config can have in a plan.
CONFIG_ACTIONS = (PlanAction.UPDATE, PlanAction.UNCHANGED)


@dataclass(frozen=True)
class ConfigPlanItem:
    """One notify URL and what apply does with it. `notify_url` is the template as the
    manifest writes it (`${NAME}` unsubstituted): a plan file never holds a value."""

    action: PlanAction  # UPDATE or UNCHANGED
    name: str
    source: str
    line: int
    publish_domain: str
    notify_url: str
    current: ShownCurrent

    @property
    def desired(self) -> str:
        """The URL to set, as outputs show it (variables as `***`)."""
        return masked_template(self.notify_url)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "name": self.name,
            "source": self.source,
            "line": self.line,
            "publishDomain": self.publish_domain,
            "notifyUrl": self.notify_url,
            "shown": self.desired,
            "current": self.current.to_json(),
        }

    @classmethod
    def from_json(cls, document: Any) -> ConfigPlanItem:
        """A saved plan's config item; PlanError for one that is malformed."""
        try:
            action = PlanAction(document["action"])
            if action not in CONFIG_ACTIONS:
                raise ValueError(f"{action.value!r} is no notify URL's action")
            item = cls(
                action=action,
                name=str(document["name"]),
                source=str(document["source"]),
                line=int(document["line"]),
                publish_domain=str(document["publishDomain"]),
                notify_url=str(document["notifyUrl"]),
                current=ShownCurrent.from_json(document["current"]),
            )
            template_parts(item.notify_url)
        except (KeyError, TypeError, ValueError) as error:
            raise PlanError(f"plan file's configs are incomplete or malformed ({error})") from error
        return item


def plan_configs(
    configs: Sequence[NotifyConfig],
    current: Mapping[str, Current],
    environ: Mapping[str, str],
    *,
    selector: Mapping[str, str] | None = None,
) -> tuple[ConfigPlanItem, ...]:
    """Compare each config's URL (substituted from `environ`) with what is set now. Pure: what
    is set now is read by the caller. A domain not in `current` is UNKNOWN (not read).

    SubstitutionError when a variable cannot be substituted (see substitution_problems).
    """
    items = []
    for config in selected(configs, selector or {}):
        wanted = substitute(config.notify_url, environ)
        now = current.get(config.publish_domain) or unknown("not read")
        same = now.status is CurrentStatus.SET and now.notify_url == wanted.url
        items.append(
            ConfigPlanItem(
                PlanAction.UNCHANGED if same else PlanAction.UPDATE,
                config.name,
                config.source,
                config.location.line,
                config.publish_domain,
                config.notify_url,
                shown_current(now, config.notify_url, wanted.values),
            )
        )
    return tuple(
        sorted(items, key=lambda item: (CONFIG_ACTIONS.index(item.action), item.source, item.name))
    )


def unknown_warnings(items: Sequence[ConfigPlanItem]) -> list[str]:
    """One warning per config whose current URL could not be read (it is planned `update`)."""
    return [
        f"the notify URL set now for {item.publish_domain} ('{item.name}') is "
        f"{item.current.text}; it is planned as `update`"
        for item in items
        if item.current.status is CurrentStatus.UNKNOWN
    ]


def saved_config_differences(
    saved: Sequence[ConfigPlanItem],
    configs: Sequence[NotifyConfig],
    selector: Mapping[str, str],
) -> list[str]:
    """How a saved plan's notify URLs differ from its manifests': each must be a manifest's
    config, with the same name, source, domain and URL as written. (A config added since is
    left for the next plan, as a task is; what is set now is read again by apply.)"""
    wanted = {config.name: config for config in selected(configs, selector)}
    differences: list[str] = []
    seen: set[str] = set()
    for item in saved:
        label = f"notify URL '{item.name}' ({item.publish_domain})"
        if item.name in seen:
            differences.append(f"{label} is listed more than once")
            continue
        seen.add(item.name)
        config = wanted.get(item.name)
        if config is None:
            differences.append(f"{label} ({item.source}) is no manifest's")
            continue
        for what, in_plan, from_manifest in (
            ("source", item.source, config.source),
            ("publishDomain", item.publish_domain, config.publish_domain),
            ("notifyUrl", item.notify_url, config.notify_url),
        ):
            if in_plan != from_manifest:
                differences.append(
                    f"{label}: its {what} is {in_plan!r} in the plan, but {from_manifest!r} in "
                    "its manifest"
                )
    return differences


def configs_of_saved(
    saved: Sequence[ConfigPlanItem], configs: Sequence[NotifyConfig]
) -> list[NotifyConfig]:
    """The manifests' configs a saved plan lists (checked with saved_config_differences)."""
    listed = {item.name for item in saved}
    return [config for config in configs if config.name in listed]


# --- apply -------------------------------------------------------------------------------------


class ConfigOutcomeKind(StrEnum):
    UPDATED = "updated"  # it differed, and was set
    UNCHANGED = "unchanged"  # it was already the URL to set: nothing was sent
    FAILED = "failed"  # it could not be read or set (the message says which)
    NOT_SENT = "not-sent"  # apply stopped before it


@dataclass(frozen=True)
class ConfigOutcome:
    item: ConfigPlanItem
    kind: ConfigOutcomeKind
    before: ShownCurrent | None = None  # what was set when apply read it
    request_id: str | None = None
    http_status: int | None = None
    message: str | None = None  # masked


def apply_configs(
    items: Sequence[ConfigPlanItem],
    client: NotifyClient,
    *,
    environ: Mapping[str, str],
    stop: threading.Event | None = None,
    abort: threading.Event | None = None,
    on_outcome: Callable[[ConfigOutcome], None] | None = None,
) -> list[ConfigOutcome]:
    """Bring each notify URL to its manifest's: read it, compare, set it when it differs.

    Every item is read again (what the plan saw may have changed since): a URL already right
    is not sent again. A 401 or an unreachable endpoint, or `stop` (a first Ctrl-C), leaves the
    rest not sent. `abort` (a second one) returns within a second, leaving the request in
    flight behind (its thread is a daemon: the caller exits without it). Never raises for an
    answer; every message is masked.
    """
    stop = stop or threading.Event()
    abort = abort or threading.Event()
    report = on_outcome or (lambda outcome: None)
    outcomes: list[ConfigOutcome] = []
    halted = False
    for item in items:
        if halted or stop.is_set() or abort.is_set():
            outcome = ConfigOutcome(
                item, ConfigOutcomeKind.NOT_SENT, message="not sent: apply was stopped"
            )
        else:
            outcome, halted = _unless_aborted(item, client, environ, abort)
        report(outcome)
        outcomes.append(outcome)
    return outcomes


_ABORTED = (
    "apply was aborted while this URL was read or set: whether it was set is unknown (the next "
    "plan reads it again)"
)


def _unless_aborted(
    item: ConfigPlanItem, client: NotifyClient, environ: Mapping[str, str], abort: threading.Event
) -> tuple[ConfigOutcome, bool]:
    """apply_one in a thread of its own, waited for until it is done or `abort` is set."""
    done: list[tuple[ConfigOutcome, bool]] = []

    def work() -> None:
        try:
            done.append(apply_one(item, client, environ))
        except Exception as error:  # a bug, not an answer: said without its text (a URL?)
            message = f"unexpected error: {type(error).__name__}"
            done.append((ConfigOutcome(item, ConfigOutcomeKind.FAILED, message=message), True))

    worker = threading.Thread(target=work, name="notify-config", daemon=True)
    worker.start()
    while worker.is_alive() and not abort.is_set():
        worker.join(0.1)
    if done:
        return done[0]
    return ConfigOutcome(item, ConfigOutcomeKind.FAILED, message=_ABORTED), True


def apply_one(
    item: ConfigPlanItem, client: NotifyClient, environ: Mapping[str, str]
) -> tuple[ConfigOutcome, bool]:
    """Read, compare and (when it differs) set one notify URL; the outcome, and whether the
    answer stops the run (a 401, an unreachable endpoint)."""
    from reconciler.client import ApiError, AuthenticationError, EndpointUnreachableError

    try:
        wanted = substitute(item.notify_url, environ)
    except SubstitutionError as error:
        return ConfigOutcome(item, ConfigOutcomeKind.FAILED, message=str(error)), False
    now = read_one(client, item.publish_domain)
    before = shown_current(now, item.notify_url, wanted.values)
    if now.status is CurrentStatus.UNKNOWN:
        return ConfigOutcome(item, ConfigOutcomeKind.FAILED, before, message=before.reason), (
            now.stops_run
        )
    if now.status is CurrentStatus.SET and now.notify_url == wanted.url:
        return ConfigOutcome(item, ConfigOutcomeKind.UNCHANGED, before), False
    try:
        result = client.set_record_notify_config(item.publish_domain, wanted.url)
    except ApiError as error:
        stops = isinstance(error, AuthenticationError | EndpointUnreachableError)
        message = mask_values(str(error), wanted.values)
        failed = ConfigOutcome(
            item, ConfigOutcomeKind.FAILED, before, error.request_id, error.http_status, message
        )
        return failed, stops
    updated = ConfigOutcome(
        item, ConfigOutcomeKind.UPDATED, before, result.request_id, result.http_status
    )
    return updated, False
