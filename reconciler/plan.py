"""Plan: what apply will do, as a value: manifests compared with the state, grouped by action."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from reconciler.identity import request_hash
from reconciler.problems import Location
from reconciler.record_times import LAST_TIME
from reconciler.tasks import SHORT_HASH, Task, canonical_request

if TYPE_CHECKING:  # the state module (and filelock) load only when a state is read
    from reconciler.notify import ConfigPlanItem, NotifyConfig
    from reconciler.state import RecordingSummary, State

PLAN_FORMAT_VERSION = 1
DEFAULT_SETTLE_SECONDS = 300
# The largest --settle (ten years): planning is safe for any settle up to it, and the CLI refuses
# more as a usage error.
MAX_SETTLE_SECONDS = 10 * 366 * 24 * 3600


class PlanAction(StrEnum):
    CREATE = "create"  # new content: apply submits it
    UNCHANGED = "unchanged"  # already submitted
    PENDING = "pending"  # sent or about to be sent, outcome unknown: needs a person
    WAITING = "waiting"  # the recording is not complete yet: a later run submits it
    REPLACED = "replaced"  # in state under a name whose manifest now asks for something else
    ORPHANED = "orphaned"  # in state, no longer in any manifest
    UPDATE = "update"  # a notify URL (notify.py) that differs from its manifest's: apply sets it


# The order tasks' actions are shown in, and the words the summary uses for them. (A notify URL
# is `update` or `unchanged`: Plan.configs, see notify.py.)
ACTION_ORDER: tuple[PlanAction, ...] = tuple(
    action for action in PlanAction if action is not PlanAction.UPDATE
)
SUMMARY_WORDS = {
    PlanAction.CREATE: "to submit",
    PlanAction.UNCHANGED: "unchanged",
    PlanAction.WAITING: "waiting",
    PlanAction.PENDING: "pending",
    PlanAction.REPLACED: "replaced",
    PlanAction.ORPHANED: "orphaned",
}


class PlanError(Exception):
    """A saved plan that cannot be used (unreadable, another format, tampered with)."""


def utc_text(moment: datetime) -> str:
    # Not strftime: its %Y writes the year 999 as "999" on some platforms.
    return f"{moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec='seconds')}Z"


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One task and what apply does with it."""

    action: PlanAction
    hash: str
    name: str
    source: str
    request: Mapping[str, Any]
    line: int | None = None  # where the manifest starts in `source`
    ready_at: str | None = None  # WAITING: when it becomes CREATE
    replaced_by: str | None = None  # REPLACED: the hash now under this name
    state_status: str | None = None  # the status recorded in state, if any
    renamed_from: str | None = None  # UNCHANGED/PENDING: the name or source recorded before
    # What the evidence (callbacks, the bucket) says of a task in the state; None: not in it.
    # A `pending` task with evidence is settled: planned UNCHANGED, never sent again.
    recording: RecordingSummary | None = field(default=None, compare=False)

    @property
    def short_hash(self) -> str:
        return self.hash[:SHORT_HASH]

    @property
    def stream(self) -> str:
        path = self.request.get("path", {})
        return "/".join(
            str(path.get(key, "?")) for key in ("publishDomain", "appName", "streamName")
        )

    @property
    def segments(self) -> list[tuple[str, str]]:
        """The recordTimes segments, (startTime, endTime), as the request sends them."""
        times = self.request.get("body", {}).get("recordTimes", [])
        return [(str(segment["startTime"]), str(segment["endTime"])) for segment in times]

    @property
    def times(self) -> str:
        """`19:11:40Z..19:13:10Z on 2026-11-20` style summary of the segments."""
        segments = self.segments
        if not segments:
            return ""
        first, last = segments[0][0], segments[-1][1]
        text = f"{first} .. {last}"
        if len(segments) > 1:
            text += f" ({len(segments)} segments)"
        return text

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "action": self.action.value,
            "hash": self.hash,
            "name": self.name,
            "source": self.source,
            "line": self.line,
            "request": self.request,
        }
        for key, value in (
            ("readyAt", self.ready_at),
            ("replacedBy", self.replaced_by),
            ("stateStatus", self.state_status),
            ("renamedFrom", self.renamed_from),
        ):
            if value is not None:
                document[key] = value
        if self.recording is not None:
            document["recording"] = self.recording.to_json()
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> PlanItem:
        return cls(
            action=PlanAction(document["action"]),
            hash=str(document["hash"]),
            name=str(document["name"]),
            source=str(document["source"]),
            request=dict(document["request"]),
            line=document.get("line"),
            ready_at=document.get("readyAt"),
            replaced_by=document.get("replacedBy"),
            state_status=document.get("stateStatus"),
            renamed_from=document.get("renamedFrom"),
        )


@dataclass(frozen=True)
class Plan:
    """Every task grouped by action, and the state it was made against."""

    items: tuple[PlanItem, ...]
    created_at: str
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    selector: Mapping[str, str] = field(default_factory=dict)
    # The manifest paths `plan` was given, and the directory it ran in (they are relative to
    # it): `apply PLAN.json` loads them again, so that it sends only what a manifest asks for.
    paths: tuple[str, ...] = ()
    directory: str = ""
    # The state's fingerprint, as read from a saved plan; or the state itself, whose
    # fingerprint (a hash of every entry) is computed only when asked for: printing a plan
    # never needs it.
    fingerprint: str | None = field(default=None, compare=False, repr=False)
    made_against: State | None = field(default=None, compare=False, repr=False)
    # The notify URLs (RecordNotifyConfig manifests) and what apply does with each.
    configs: tuple[ConfigPlanItem, ...] = ()

    @property
    def state_fingerprint(self) -> str:
        if self.fingerprint is None:
            assert self.made_against is not None, "a plan knows its state or its fingerprint"
            object.__setattr__(self, "fingerprint", self.made_against.fingerprint())
        assert self.fingerprint is not None
        return self.fingerprint

    @property
    def made_at(self) -> datetime:
        """The `now` the plan was made with (to the second, as `createdAt` records it)."""
        return datetime.strptime(self.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    def of(self, action: PlanAction) -> list[PlanItem]:
        return [item for item in self.items if item.action is action]

    def counts(self) -> dict[PlanAction, int]:
        counts = dict.fromkeys(ACTION_ORDER, 0)
        for item in self.items:
            counts[item.action] += 1
        return counts

    @property
    def pending_count(self) -> int:
        return sum(1 for item in self.items if item.action is PlanAction.PENDING)

    @property
    def has_changes(self) -> bool:
        return any(item.action is PlanAction.CREATE for item in self.items) or any(
            config.action is PlanAction.UPDATE for config in self.configs
        )

    def summary(self) -> str:
        """`Plan: 3 to submit, 12 unchanged, 1 waiting, 1 pending.` (zero counts left out)."""
        counts = self.counts()
        parts = [
            f"{counts[action]} {SUMMARY_WORDS[action]}"
            for action in (
                PlanAction.CREATE,
                PlanAction.UNCHANGED,
                PlanAction.WAITING,
                PlanAction.PENDING,
                PlanAction.REPLACED,
                PlanAction.ORPHANED,
            )
            if counts[action] or action is PlanAction.CREATE
        ]
        return f"Plan: {', '.join(parts)}{self._configs_summary()}."

    def _configs_summary(self) -> str:
        """`; notify URLs: 1 to update, 1 unchanged` (nothing when no manifest declares one)."""
        if not self.configs:
            return ""
        updates = sum(1 for config in self.configs if config.action is PlanAction.UPDATE)
        parts = [f"{updates} to update"] if updates else []
        if len(self.configs) > updates:
            parts.append(f"{len(self.configs) - updates} unchanged")
        return f"; notify URL{'s' if len(self.configs) > 1 else ''}: {', '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        """The saved-plan / `plan --format json` document."""
        counts = self.counts()
        document = {
            "formatVersion": PLAN_FORMAT_VERSION,
            "command": "plan",
            "createdAt": self.created_at,
            "stateFingerprint": self.state_fingerprint,
            "settleSeconds": self.settle_seconds,
            "selector": dict(self.selector),
            "directory": self.directory,
            "paths": list(self.paths),
            "summary": {action.value: counts[action] for action in ACTION_ORDER},
            "items": [item.to_json() for item in self.items],
        }
        if self.configs:  # only when the manifests declare notify URLs: older readers see none
            document["configs"] = [config.to_json() for config in self.configs]
        return document

    @classmethod
    def from_json(cls, document: Any) -> Plan:
        """A saved plan, checked: right format, and every request still hashes to its identity."""
        if not isinstance(document, dict) or document.get("command") != "plan":
            raise PlanError("not a reconciler plan file (made by `reconciler plan --out FILE`)")
        version = document.get("formatVersion")
        if version != PLAN_FORMAT_VERSION:
            raise PlanError(
                f"plan format version {version!r} is not supported; this reconciler reads "
                f"version {PLAN_FORMAT_VERSION}: make the plan again with this version"
            )
        if "paths" not in document or "directory" not in document:
            raise PlanError(
                "the plan does not record the manifests it was made from (made by an earlier "
                "reconciler?), so it cannot be checked against them: make the plan again with "
                "`reconciler plan PATH... --out FILE`"
            )
        try:
            items = tuple(PlanItem.from_json(item) for item in document["items"])
            settle = int(document.get("settleSeconds", DEFAULT_SETTLE_SECONDS))
            plan = cls(
                items=items,
                fingerprint=str(document["stateFingerprint"]),
                created_at=str(document["createdAt"]),
                settle_seconds=settle,
                selector=dict(document.get("selector") or {}),
                paths=tuple(_strings(document["paths"])),
                directory=str(document["directory"]),
                configs=_saved_configs(document.get("configs", [])),
            )
            plan.made_at  # noqa: B018 (a createdAt that is not a time is refused here)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan file is incomplete or malformed ({exc})") from exc
        if not 0 <= settle <= MAX_SETTLE_SECONDS:
            raise PlanError(
                f"plan file's settleSeconds {settle} is not between 0 and {MAX_SETTLE_SECONDS} "
                "(what `plan --settle` allows): edited by hand?"
            )
        return plan

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _saved_configs(documents: Any) -> tuple[ConfigPlanItem, ...]:
    from reconciler.notify import ConfigPlanItem

    if not isinstance(documents, list):
        raise TypeError("'configs' is not a list")
    return tuple(ConfigPlanItem.from_json(document) for document in documents)


def _strings(values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise TypeError("'paths' is not a list of strings")
    return values


# Items that come from manifests; `replaced` and `orphaned` ones come from the state alone.
_FROM_MANIFESTS = frozenset(
    {PlanAction.CREATE, PlanAction.UNCHANGED, PlanAction.PENDING, PlanAction.WAITING}
)
_SHOWN_DIFFERENCES = 10


def replan_saved(
    saved: Plan,
    state: State,
    *,
    now: datetime,
    tasks: Sequence[Task],
    configs: Sequence[NotifyConfig] = (),
) -> Plan:
    """`saved`, once its own tasks and its manifests' are planned again and found unchanged.

    A saved plan is applied only if it is exactly what planning its tasks gives now: every
    item listed once, every request a valid one that hashes to the item's hash, every action
    the one planning gives (an `unchanged`, `pending` or `waiting` item edited into `create`
    would send a clip twice, or before its recording exists). And every item must be what
    planning `tasks` (the manifests the plan records, loaded again) gives with the plan's own
    `now`, settle time and selector: an item appended by hand, however well-formed, is no
    manifest's, and a manifest edited since the plan was made no longer asks for what the
    plan lists. PlanError lists what differs. The same for its notify URLs: each must be one
    of `configs` (the manifests'), as written (see notify.saved_config_differences).
    """
    if saved.state_fingerprint != state.fingerprint():
        raise PlanError(
            f"the state changed since this plan was made at {saved.created_at}; nothing was "
            "sent. Make a new plan and apply that"
        )
    differences = _own_differences(saved, state, now)
    if differences:
        _refuse(
            "the plan is not what planning its tasks gives now (was it edited, or is it out of "
            "date?)",
            differences,
        )
    differences = _manifest_differences(saved, state, tasks)
    if saved.configs:
        from reconciler.notify import saved_config_differences

        differences += saved_config_differences(saved.configs, configs, saved.selector)
    if differences:
        _refuse(
            "the plan is not what its manifests ask for (was it edited by hand, or were the "
            "manifests changed since it was made?)",
            differences,
        )
    return saved


def _refuse(why: str, differences: list[str]) -> NoReturn:
    shown = differences[:_SHOWN_DIFFERENCES]
    if len(differences) > len(shown):
        shown.append(f"... and {len(differences) - len(shown)} more")
    raise PlanError(
        f"{why}; nothing was sent. Make a new plan and apply that:\n  " + "\n  ".join(shown)
    )


def _own_differences(saved: Plan, state: State, now: datetime) -> list[str]:
    """What differs when the plan's own items are planned again against `state` at `now`."""
    differences: list[str] = []
    seen: dict[str, int] = {}
    tasks: list[Task] = []
    for item in saved.items:
        seen[item.hash] = seen.get(item.hash, 0) + 1
        if seen[item.hash] == 2:
            differences.append(f"{_label(item)} is listed more than once")
        if seen[item.hash] > 1:
            continue
        problem = _request_problem(item)
        if problem is not None:
            differences.append(f"{_label(item)}: {problem}")
        elif item.action in _FROM_MANIFESTS:
            tasks.append(_task_of(item))
        elif state.get(item.hash) is None:
            differences.append(f"{_label(item)} is {item.action.value} but not in the state")
    if differences:
        return differences
    fresh = make_plan(tasks, state, now=now, settle_seconds=saved.settle_seconds)
    actions = {item.hash: item.action for item in fresh.items}
    for item in saved.items:
        now_action = actions.get(item.hash)
        if item.action in _FROM_MANIFESTS and now_action is not item.action:
            differences.append(
                f"{_label(item)} is {item.action.value} in the plan, but planning it now "
                f"gives {now_action.value if now_action else 'nothing'}"
            )
    return differences


def _manifest_differences(saved: Plan, state: State, tasks: Sequence[Task]) -> list[str]:
    """How the items of `saved` differ from planning its manifests' `tasks` as the plan was
    made: against the same state (its fingerprint is checked first), at the plan's own `now`,
    with its settle time and selector. Planning is a function of these, so a difference is an
    edit of the plan or of its manifests. A manifest added since asks for more than the plan
    lists: that is left for the next plan (a saved plan is applied exactly), not refused."""
    fresh = make_plan(
        tasks,
        state,
        now=saved.made_at,
        settle_seconds=saved.settle_seconds,
        selector=saved.selector,
    )
    wanted = {item.hash: item for item in fresh.items}
    differences: list[str] = []
    for item in saved.items:
        planned = wanted.get(item.hash)
        if planned is None:
            differences.append(
                f"{_label(item)} ({item.action.value}, {item.source}) is no manifest's: none of "
                f"{_listed(saved.paths)} asks for it"
            )
            continue
        for what, in_plan, from_manifests in (
            ("action", item.action.value, planned.action.value),
            ("name", item.name, planned.name),
            ("source", item.source, planned.source),
        ):
            if in_plan != from_manifests:
                differences.append(
                    f"{_label(item)}: its {what} is {in_plan!r} in the plan, but "
                    f"{from_manifests!r} when its manifests are planned"
                )
    return differences


def _listed(paths: Sequence[str]) -> str:
    return ", ".join(paths) if paths else "the plan's manifests (it records none)"


def _label(item: PlanItem) -> str:
    return f"'{item.name}' ({item.short_hash})"


def _request_problem(item: PlanItem) -> str | None:
    """Why `item.request` is not the canonical request of a valid manifest, if it is not."""
    from reconciler.schema import check_spec

    request = item.request
    path, body = request.get("path"), request.get("body")
    if set(request) != {"path", "body"} or not isinstance(path, dict | Mapping):
        return "the request is not a {path, body} object"
    if not isinstance(body, dict | Mapping):
        return "the request has no body object"
    spec = {**body, **path}
    problems = check_spec(spec)
    if problems:
        where, message = problems[0]
        return f"the request is not valid: {where}: {message}"
    if canonical_request(spec) != request:
        return "the request is not in canonical form (edited by hand?)"
    if request_hash(request) != item.hash:
        return "the request does not hash to the item's hash (edited by hand?)"
    return None


def _task_of(item: PlanItem) -> Task:
    where = Location(item.source, item.line or 1, 1)
    return Task(item.name, item.request, item.hash, where, where)


def ready_time(last_end: datetime, settle: timedelta) -> datetime | None:
    """When a clip's recording is complete and settled; None when that is after the last time
    a datetime holds (a clip ending in the year 9999): it waits, and its readyAt is LAST_TIME."""
    if settle > LAST_TIME - last_end:
        return None
    return last_end + settle


def parse_selector(expressions: Iterable[str]) -> dict[str, str]:
    """`key=value` strings into a mapping; ValueError with the offending text otherwise."""
    selector: dict[str, str] = {}
    for expression in expressions:
        key, sep, value = expression.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"selector {expression!r} is not key=value")
        selector[key.strip()] = value.strip()
    return selector


def matches(task: Task, selector: Mapping[str, str]) -> bool:
    return all(task.labels.get(key) == value for key, value in selector.items())


def make_plan(
    tasks: Sequence[Task],
    state: State,
    *,
    now: datetime,
    settle_seconds: int = DEFAULT_SETTLE_SECONDS,
    selector: Mapping[str, str] | None = None,
) -> Plan:
    """Compare the manifests' tasks with the state. Pure: the clock is passed in."""
    selector = dict(selector or {})
    items: list[PlanItem] = []
    if not 0 <= settle_seconds <= MAX_SETTLE_SECONDS:
        raise ValueError(
            f"settle_seconds {settle_seconds} is not between 0 and {MAX_SETTLE_SECONDS}"
        )
    settle = timedelta(seconds=settle_seconds)
    current = {task.hash for task in tasks}
    by_name = {task.name: task for task in tasks}
    for task in tasks:
        if not matches(task, selector):
            continue
        entry = state.get(task.hash)
        source = task.source
        if entry is None:
            ready = ready_time(task.last_end, settle)
            if ready is None or now < ready:
                items.append(
                    PlanItem(
                        PlanAction.WAITING,
                        task.hash,
                        task.name,
                        source,
                        task.request,
                        line=task.location.line,
                        ready_at=utc_text(ready or LAST_TIME),
                    )
                )
            else:
                items.append(
                    PlanItem(
                        PlanAction.CREATE,
                        task.hash,
                        task.name,
                        source,
                        task.request,
                        line=task.location.line,
                    )
                )
            continue
        renamed = None
        if (entry.name, entry.source) != (task.name, source):
            renamed = f"{entry.name} ({entry.source})"
        recording = state.recording(task.hash)
        # A `pending` task that evidence shows the service processed is settled: not sent again.
        pending = entry.status == "pending" and not (recording and recording.settled)
        action = PlanAction.PENDING if pending else PlanAction.UNCHANGED
        items.append(
            PlanItem(
                action,
                task.hash,
                task.name,
                source,
                task.request,
                line=task.location.line,
                state_status=entry.status.value,
                renamed_from=renamed,
                recording=recording,
            )
        )
    for entry in state.entries.values():
        if entry.hash in current:
            continue
        successor = by_name.get(entry.name)
        if selector and (successor is None or not matches(successor, selector)):
            continue  # with a selector, only what the selected manifests touch is shown
        items.append(
            PlanItem(
                PlanAction.REPLACED if successor else PlanAction.ORPHANED,
                entry.hash,
                entry.name,
                entry.source,
                entry.request,
                replaced_by=successor.hash if successor else None,
                state_status=entry.status.value,
                recording=state.recording(entry.hash),
            )
        )
    # Grouped by action in ACTION_ORDER, each group sorted by manifest file, name and hash.
    groups: dict[PlanAction, list[PlanItem]] = {action: [] for action in ACTION_ORDER}
    for item in items:
        groups[item.action].append(item)
    ordered: list[PlanItem] = []
    for group in groups.values():
        group.sort(key=lambda item: (item.source, item.name, item.hash))
        ordered.extend(group)
    return Plan(
        items=tuple(ordered),
        made_against=state,
        created_at=utc_text(now),
        settle_seconds=settle_seconds,
        selector=selector,
    )
