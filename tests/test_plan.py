"""Planning: manifests compared with state, each action, the settle window, selectors, saved plans."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from reconciler.plan import (
    MAX_SETTLE_SECONDS,
    Plan,
    PlanAction,
    PlanError,
    make_plan,
    parse_selector,
    replan_saved,
)
from reconciler.state import State, StateEntry, TaskStatus
from reconciler.tasks import Task
from tests.conftest import NOW

MakeTask = Callable[..., Task]


def entry(task: Task, status: TaskStatus = TaskStatus.SUBMITTED, **changes: Any) -> StateEntry:
    fields: dict[str, Any] = {
        "hash": task.hash,
        "status": status,
        "name": task.name,
        "source": task.source,
        "request": task.request,
        "updated_at": "2026-11-21T00:00:00Z",
    }
    if status is TaskStatus.SUBMITTED:
        fields.update(request_id="r" * 32, submitted_at="2026-11-21T00:00:00Z")
    fields.update(changes)
    return StateEntry(**fields)


def state_of(*entries: StateEntry) -> State:
    return State({e.hash: e for e in entries})


def actions(plan: Plan) -> dict[str, str]:
    return {item.name: item.action.value for item in plan.items}


def test_each_action(make_task: MakeTask) -> None:
    new, done, pending = make_task(1), make_task(2), make_task(3)
    old_version = make_task(4, name="reel")
    new_version = make_task(5, name="reel")
    gone = make_task(6)
    state = state_of(
        entry(done), entry(pending, TaskStatus.PENDING), entry(old_version), entry(gone)
    )
    plan = make_plan([new, done, pending, new_version], state, now=NOW)
    by = {(item.name, item.hash): item.action for item in plan.items}
    assert by[(new.name, new.hash)] is PlanAction.CREATE
    assert by[(done.name, done.hash)] is PlanAction.UNCHANGED
    assert by[(pending.name, pending.hash)] is PlanAction.PENDING
    assert by[("reel", new_version.hash)] is PlanAction.CREATE
    assert by[("reel", old_version.hash)] is PlanAction.REPLACED
    assert by[(gone.name, gone.hash)] is PlanAction.ORPHANED
    replaced = plan.of(PlanAction.REPLACED)[0]
    assert replaced.replaced_by == new_version.hash
    assert plan.summary() == "Plan: 2 to submit, 1 unchanged, 1 pending, 1 replaced, 1 orphaned."
    assert plan.has_changes


def test_summary_with_nothing_to_do(make_task: MakeTask) -> None:
    task = make_task(1)
    plan = make_plan([task], state_of(entry(task)), now=NOW)
    assert plan.summary() == "Plan: 0 to submit, 1 unchanged."
    assert not plan.has_changes


def test_settle_window(make_task: MakeTask) -> None:
    task = make_task(1)  # last endTime 2026-11-20T19:05:00Z
    end = task.last_end
    just_before = make_plan([task], State(), now=end + timedelta(seconds=299))
    assert just_before.items[0].action is PlanAction.WAITING
    assert just_before.items[0].ready_at == "2026-11-20T19:10:00Z"
    at_settle = make_plan([task], State(), now=end + timedelta(seconds=300))
    assert at_settle.items[0].action is PlanAction.CREATE
    in_future = make_plan([task], State(), now=end - timedelta(hours=1))
    assert in_future.items[0].action is PlanAction.WAITING
    no_settle = make_plan([task], State(), now=end, settle_seconds=0)
    assert no_settle.items[0].action is PlanAction.CREATE
    assert "1 waiting" in just_before.summary()


LAST_SEGMENT = [{"startTime": "9999-12-31T23:50:00Z", "endTime": "9999-12-31T23:59:59Z"}]
FIRST_SEGMENT = [{"startTime": "0001-01-01T00:00:00Z", "endTime": "0001-01-01T00:05:00Z"}]


@pytest.mark.parametrize("settle", [0, 1, 300, MAX_SETTLE_SECONDS])
def test_any_settle_up_to_the_maximum_plans_the_first_and_last_times(
    make_task: MakeTask, settle: int
) -> None:
    last = make_task(1, recordTimes=LAST_SEGMENT)
    first = make_task(2, recordTimes=FIRST_SEGMENT)
    plan = make_plan([last, first], State(), now=NOW, settle_seconds=settle)
    assert actions(plan) == {"clip-1": "waiting", "clip-2": "create"}
    # The last second a time can hold: the clip waits past any clock there can be.
    assert plan.of(PlanAction.WAITING)[0].ready_at == "9999-12-31T23:59:59Z"
    assert Plan.from_json(json.loads(plan.dumps())).settle_seconds == settle


def test_a_settle_out_of_range_is_refused(make_task: MakeTask) -> None:
    with pytest.raises(ValueError, match="settle_seconds"):
        make_plan([make_task(1)], State(), now=NOW, settle_seconds=MAX_SETTLE_SECONDS + 1)
    document = json.loads(make_plan([make_task(1)], State(), now=NOW).dumps())
    for settle in (10**20, -1):
        document["settleSeconds"] = settle
        with pytest.raises(PlanError, match="settleSeconds"):
            Plan.from_json(document)


def test_waiting_uses_the_last_segment(make_task: MakeTask) -> None:
    segments = [
        {"startTime": "2026-11-20T19:00:00Z", "endTime": "2026-11-20T19:01:00Z"},
        {"startTime": "2026-11-20T21:00:00Z", "endTime": "2026-11-20T21:01:00Z"},
    ]
    task = make_task(1, recordTimes=segments)
    from datetime import UTC, datetime

    plan = make_plan([task], State(), now=datetime(2026, 11, 20, 20, 0, tzinfo=UTC))
    assert plan.items[0].action is PlanAction.WAITING


def test_rename_keeps_identity(make_task: MakeTask) -> None:
    task = make_task(1)
    renamed = make_task(1, name="clip-1-renamed", source="moved/elsewhere.yaml")
    assert renamed.hash == task.hash
    plan = make_plan([renamed], state_of(entry(task)), now=NOW)
    (item,) = plan.items
    assert item.action is PlanAction.UNCHANGED
    assert item.renamed_from == "clip-1 (clips/clip-1.yaml)"
    assert item.name == "clip-1-renamed"


def test_selector(make_task: MakeTask) -> None:
    a = make_task(1, labels={"event": "final", "kind": "goal"})
    b = make_task(2, labels={"event": "final", "kind": "reel"})
    c = make_task(3, labels={"event": "semi"})
    gone = make_task(4)
    plan = make_plan([a, b, c], state_of(entry(gone)), now=NOW, selector={"event": "final"})
    assert actions(plan) == {"clip-1": "create", "clip-2": "create"}
    plan = make_plan([a, b, c], State(), now=NOW, selector={"event": "final", "kind": "reel"})
    assert actions(plan) == {"clip-2": "create"}
    assert parse_selector(["event=final", "kind = goal"]) == {"event": "final", "kind": "goal"}
    for bad in ["event", "=x"]:
        with pytest.raises(ValueError, match="not key=value"):
            parse_selector([bad])


def test_saved_plan_round_trip_and_tamper_check(make_task: MakeTask) -> None:
    plan = make_plan([make_task(1), make_task(2)], State(), now=NOW)
    loaded = Plan.from_json(json.loads(plan.dumps()))
    assert loaded == plan
    document = json.loads(plan.dumps())
    document["items"][0]["request"]["body"]["saveBucket"] = "someone-elses"
    with pytest.raises(PlanError, match="does not hash to the item's hash"):
        replan_saved(Plan.from_json(document), State(), now=NOW, tasks=[])
    with pytest.raises(PlanError, match="not a reconciler plan"):
        Plan.from_json({"formatVersion": 1})
    document = json.loads(plan.dumps())
    document["formatVersion"] = 99
    with pytest.raises(PlanError, match="version 99"):
        Plan.from_json(document)
    del document["items"]
    document["formatVersion"] = 1
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_json(document)


def test_plan_records_the_state_fingerprint(make_task: MakeTask) -> None:
    task = make_task(1)
    empty = make_plan([task], State(), now=NOW)
    after = make_plan([task], state_of(entry(task, TaskStatus.PENDING)), now=NOW)
    assert empty.state_fingerprint != after.state_fingerprint
    assert empty.state_fingerprint == State().fingerprint()


def test_plan_order_is_stable(make_task: MakeTask) -> None:
    tasks = [make_task(n) for n in (3, 1, 2)]
    first = make_plan(tasks, State(), now=NOW)
    second = make_plan(list(reversed(tasks)), State(), now=NOW)
    assert first.items == second.items
    assert [item.name for item in first.items] == ["clip-1", "clip-2", "clip-3"]


# --- saved plans: re-planned against the current state, and refused when anything differs ---


def saved(plan: Plan, edit: Callable[[dict[str, Any]], None] | None = None) -> Plan:
    """`plan` as `apply PLAN.json` reads it back, after an optional hand edit of the document."""
    document = json.loads(plan.dumps())
    if edit is not None:
        edit(document)
    return Plan.from_json(document)


def item_named(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in document["items"] if item["name"] == name)


def test_an_untouched_saved_plan_is_applied(make_task: MakeTask) -> None:
    done, new = make_task(1), make_task(2)
    current = state_of(entry(done))
    plan = make_plan([done, new], current, now=NOW)
    assert replan_saved(saved(plan), current, now=NOW, tasks=[done, new]) == plan


@pytest.mark.parametrize(
    ("status", "start"),
    [(TaskStatus.SUBMITTED, "unchanged"), (TaskStatus.PENDING, "pending")],
)
def test_an_item_turned_create_by_hand_is_refused(
    make_task: MakeTask, status: TaskStatus, start: str
) -> None:
    task = make_task(1)
    current = state_of(entry(task, status))
    plan = make_plan([task], current, now=NOW)
    assert actions(plan) == {"clip-1": start}

    def to_create(document: dict[str, Any]) -> None:
        item_named(document, "clip-1")["action"] = "create"

    with pytest.raises(PlanError, match=f"create in the plan, but planning it now gives {start}"):
        replan_saved(saved(plan, to_create), current, now=NOW, tasks=[task])


def test_a_waiting_item_turned_create_is_refused_until_its_recording_ends(
    make_task: MakeTask,
) -> None:
    task = make_task(1)
    early = task.last_end + timedelta(seconds=10)
    plan = make_plan([task], State(), now=early)
    assert actions(plan) == {"clip-1": "waiting"}

    def to_create(document: dict[str, Any]) -> None:
        item_named(document, "clip-1")["action"] = "create"

    with pytest.raises(PlanError, match="planning it now gives waiting"):
        replan_saved(saved(plan, to_create), State(), now=early, tasks=[task])


def test_a_waiting_plan_whose_recording_has_ended_is_out_of_date(make_task: MakeTask) -> None:
    task = make_task(1)
    plan = make_plan([task], State(), now=task.last_end)
    with pytest.raises(PlanError, match="waiting in the plan, but planning it now gives create"):
        replan_saved(saved(plan), State(), now=task.last_end + timedelta(hours=1), tasks=[task])


def test_an_item_listed_twice_is_refused(make_task: MakeTask) -> None:
    plan = make_plan([make_task(1)], State(), now=NOW)

    def triple(document: dict[str, Any]) -> None:
        document["items"] = document["items"] * 3

    with pytest.raises(PlanError, match=r"'clip-1' \(\w{12}\) is listed more than once"):
        replan_saved(saved(plan, triple), State(), now=NOW, tasks=[])


def test_an_edited_request_with_a_recomputed_hash_must_still_be_a_valid_canonical_one(
    make_task: MakeTask,
) -> None:
    from reconciler.tasks import request_hash

    plan = make_plan([make_task(1)], State(), now=NOW)

    def rehashed(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def edit(document: dict[str, Any]) -> None:
            item = document["items"][0]
            change(item["request"])
            item["hash"] = request_hash(item["request"])

        return edit

    def invalid(request: dict[str, Any]) -> None:
        request["path"]["streamName"] = request["body"]["streamName"] = "a/b"

    def not_canonical(request: dict[str, Any]) -> None:
        request["body"]["recordFileType"] = "MP4"

    def path_differs(request: dict[str, Any]) -> None:
        request["path"]["streamName"] = "elsewhere"

    def extra_field(request: dict[str, Any]) -> None:
        request["body"]["callbackUrl"] = "http://example.com"

    for change, message in [
        (invalid, "the request is not valid: streamName"),
        (not_canonical, "not in canonical form"),
        (path_differs, "not in canonical form"),
        (extra_field, "the request is not valid"),
    ]:
        with pytest.raises(PlanError, match=message):
            replan_saved(saved(plan, rehashed(change)), State(), now=NOW, tasks=[])


def test_a_saved_plan_is_refused_once_the_state_changed(make_task: MakeTask) -> None:
    task = make_task(1)
    plan = make_plan([task], State(), now=NOW)
    with pytest.raises(PlanError, match="the state changed since this plan was made"):
        replan_saved(saved(plan), state_of(entry(task, TaskStatus.PENDING)), now=NOW, tasks=[task])


def test_orphaned_and_replaced_items_must_still_be_in_the_state(make_task: MakeTask) -> None:
    gone = make_task(1)
    current = state_of(entry(gone))
    plan = make_plan([make_task(2)], current, now=NOW)
    assert actions(plan)["clip-1"] == "orphaned"
    assert replan_saved(saved(plan), current, now=NOW, tasks=[make_task(2)]) == plan

    def orphan_to_create(document: dict[str, Any]) -> None:
        item_named(document, "clip-1")["action"] = "create"

    with pytest.raises(PlanError, match="planning it now gives unchanged"):
        replan_saved(saved(plan, orphan_to_create), current, now=NOW, tasks=[make_task(2)])


# --- saved plans: checked against the manifests they were made from ---


def test_an_appended_item_with_its_right_hash_is_no_manifests(make_task: MakeTask) -> None:
    mine, foreign = make_task(1), make_task(2)
    plan = make_plan([mine], State(), now=NOW)
    other = json.loads(make_plan([foreign], State(), now=NOW).dumps())

    def append(document: dict[str, Any]) -> None:
        document["items"].append(other["items"][0])

    forged = saved(plan, append)
    # The plan's own items are self-consistent: only its manifests show the forgery.
    with pytest.raises(PlanError, match=r"'clip-2' \(\w{12}\) \(create, .*\) is no manifest's"):
        replan_saved(forged, State(), now=NOW, tasks=[mine])


def test_a_manifest_changed_since_the_plan_was_made_is_refused(make_task: MakeTask) -> None:
    task = make_task(1)
    plan = make_plan([task], State(), now=NOW)
    edited = make_task(3, name="clip-1")
    with pytest.raises(PlanError, match="manifests changed since") as refused:
        replan_saved(saved(plan), State(), now=NOW, tasks=[edited])
    assert "is no manifest's" in str(refused.value)
    # A manifest added since is not in the plan: it waits for the next one.
    assert replan_saved(saved(plan), State(), now=NOW, tasks=[task, edited]) == plan


def test_an_item_renamed_by_hand_is_refused(make_task: MakeTask) -> None:
    task = make_task(1)
    plan = make_plan([task], State(), now=NOW)

    def rename(document: dict[str, Any]) -> None:
        item_named(document, "clip-1")["name"] = "someone-else"

    with pytest.raises(PlanError, match="its name is 'someone-else' in the plan, but 'clip-1'"):
        replan_saved(saved(plan, rename), State(), now=NOW, tasks=[task])


def test_the_manifests_are_planned_with_the_plans_own_now_and_settle(make_task: MakeTask) -> None:
    task = make_task(1)
    made = task.last_end + timedelta(seconds=400)
    plan = make_plan([task], State(), now=made, settle_seconds=360)
    assert actions(plan) == {"clip-1": "create"}
    # Applied later: the manifests are planned at the plan's `now` with its settle time.
    later = made + timedelta(hours=2)
    assert replan_saved(saved(plan), State(), now=later, tasks=[task]) == plan


def test_a_plan_that_records_no_manifests_is_refused(make_task: MakeTask) -> None:
    document = json.loads(make_plan([make_task(1)], State(), now=NOW).dumps())
    del document["paths"]
    with pytest.raises(PlanError, match="does not record the manifests it was made from"):
        Plan.from_json(document)
