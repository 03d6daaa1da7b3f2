"""Task: a valid manifest as the exact request it sends, identified by the sha256 of that request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reconciler.collector import collector_paused
from reconciler.identity import request_hash as request_hash
from reconciler.manifests import NOTIFY_KIND, Ignored, Manifest, find_manifests, iter_found
from reconciler.problems import Location, Problem, field_path
from reconciler.record_times import parse_record_time, utc_record_time

if TYPE_CHECKING:
    from reconciler.notify import NotifyConfig

PATH_FIELDS = ("publishDomain", "appName", "streamName")
BODY_FIELDS = (
    "publishDomain",
    "appName",
    "streamName",
    "recordTimes",
    "saveBucket",
    "saveEndpoint",
    "recordFileType",
)
OPTIONAL_BODY_FIELDS = ("saveObject", "taskExternalId")
SHORT_HASH = 12


def normalise_file_types(value: str) -> str:
    """`MP4;flv` and `flv;mp4` ask for the same thing: lower-case, sorted, `;`-joined."""
    return ";".join(sorted(part.lower() for part in value.split(";")))


def canonical_request(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The request a (valid) spec sends: path parameters and JSON body, normalised."""
    body: dict[str, Any] = {name: spec[name] for name in BODY_FIELDS}
    # A time written with an offset is sent (and hashed) as its UTC form: one clip, one request.
    body["recordTimes"] = [
        {
            "startTime": utc_record_time(segment["startTime"]),
            "endTime": utc_record_time(segment["endTime"]),
        }
        for segment in spec["recordTimes"]
    ]
    body["recordFileType"] = normalise_file_types(spec["recordFileType"])
    for name in OPTIONAL_BODY_FIELDS:
        if spec.get(name) is not None:
            body[name] = spec[name]
    return {"path": {name: spec[name] for name in PATH_FIELDS}, "body": body}


@dataclass(frozen=True, slots=True)
class Task:
    """One clip to submit: the request, its identity, and the manifest it came from."""

    name: str
    request: Mapping[str, Any]
    hash: str
    location: Location
    name_location: Location
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        return self.hash[:SHORT_HASH]

    @property
    def source(self) -> str:
        return self.location.file

    @property
    def path(self) -> Mapping[str, str]:
        return self.request["path"]  # type: ignore[no-any-return]

    @property
    def body(self) -> Mapping[str, Any]:
        return self.request["body"]  # type: ignore[no-any-return]

    @property
    def stream(self) -> str:
        path = self.path
        return f"{path['publishDomain']}/{path['appName']}/{path['streamName']}"

    @property
    def last_end(self) -> datetime:
        """When the recording this clip needs is complete (the last segment's end)."""
        end = parse_record_time(self.body["recordTimes"][-1]["endTime"])
        assert end is not None, "tasks are built from validated manifests only"
        return end


def task_from_manifest(
    manifest: Manifest, known: Mapping[str, Mapping[str, Any]] | None = None
) -> Task:
    """The Task of a manifest that passed check_manifest (a set's clip: the RecordTask it is).

    `known` maps hashes to requests already in memory (the state's): an equal hash means an
    equal request, so the task shares that object instead of keeping a copy.
    """
    doc = manifest.doc
    request: Mapping[str, Any] = canonical_request(doc["spec"])
    identity = request_hash(request)
    if known is not None:
        request = known.get(identity, request)
    return Task(
        name=doc["metadata"]["name"],
        request=request,
        hash=identity,
        location=manifest.location,
        name_location=manifest.where(("metadata", "name")),
        labels=dict(doc["metadata"].get("labels") or {}),
    )


@dataclass(frozen=True, slots=True)
class ManifestResult:
    """One manifest's verdict, for reports that list every manifest (JSON, JUnit)."""

    location: Location
    name: str | None
    hash: str | None
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class TaskSet:
    """Everything read from the given paths: valid tasks, every problem, and counts."""

    tasks: list[Task]
    problems: list[Problem]
    results: list[ManifestResult]
    files: int  # manifest files opened (whether or not they could be parsed)
    ignored: tuple[Ignored, ...] = ()  # what an ignore file left out of a directory walk
    # Paths with problems that are no manifest file: missing, a FIFO, an empty directory...
    unread: frozenset[str] = frozenset()
    configs: list[NotifyConfig] = field(default_factory=list)  # valid RecordNotifyConfigs

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def invalid(self) -> int:
        return sum(1 for result in self.results if not result.valid)


def load_tasks(
    paths: Sequence[str], *, known: Mapping[str, Mapping[str, Any]] | None = None
) -> TaskSet:
    """Load, check and hash every manifest under `paths`; set-level rules included.

    `known`: requests already in memory by hash (see task_from_manifest), to share them.
    """
    with collector_paused():
        return _load_tasks(paths, known)


def _load_tasks(paths: Sequence[str], known: Mapping[str, Mapping[str, Any]] | None) -> TaskSet:
    from reconciler.schema import check_manifests  # the validator, only where manifests load

    tasks: list[Task] = []
    configs: list[NotifyConfig] = []
    problems: list[Problem] = []
    results: list[ManifestResult] = []
    files = 0
    unread: set[str] = set()
    # Where each task's name and request are written, for the set-level problems below: a
    # clip of a set writes them in its entry of the set (spec.clips[N]), not at metadata.name.
    fields: dict[Location, tuple[str, str]] = {}
    walked = find_manifests(paths)
    for loaded in iter_found(walked):
        files += loaded.read
        if not loaded.read:
            unread.add(loaded.file)
        problems.extend(loaded.problems)
        # One file at a time: a set's clips are checked together (see check_manifests).
        verdicts = check_manifests(loaded.manifests)
        problems.extend(verdicts.problems)
        for manifest, found in zip(loaded.manifests, verdicts.per_manifest, strict=True):
            if not found and manifest.doc.get("kind") == NOTIFY_KIND:
                # Imported only when a manifest is one: most manifest sets have none.
                from reconciler.notify import config_from_manifest

                configs.append(config_from_manifest(manifest))
                results.append(ManifestResult(manifest.location, _name_of(manifest.doc), None, ()))
                continue
            task = None if found else task_from_manifest(manifest, known)
            if task is not None:
                tasks.append(task)
                if manifest.clip is not None:
                    fields[task.location] = (
                        field_path(manifest.written(("metadata", "name"))),
                        field_path(manifest.written(("spec",))),
                    )
            name = _name_of(manifest.doc)
            results.append(
                ManifestResult(manifest.location, name, task.hash if task else None, tuple(found))
            )
    duplicates = [(task.location, problem) for task, problem in find_duplicates(tasks, fields)]
    if configs:
        from reconciler.notify import find_duplicate_configs

        twins = find_duplicate_configs(configs)
        duplicates += [(config.location, problem) for config, problem in twins]
    if duplicates:
        extra: dict[Location, list[Problem]] = {}
        for location, problem in duplicates:
            extra.setdefault(location, []).append(problem)
            problems.append(problem)
        results = [
            ManifestResult(r.location, r.name, r.hash, r.problems + tuple(extra[r.location]))
            if r.location in extra
            else r
            for r in results
        ]
    return TaskSet(
        tasks,
        sorted(problems),
        results,
        files,
        tuple(walked.ignored),
        frozenset(unread),
        configs,
    )


def _name_of(doc: Any) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def find_duplicates(
    tasks: Sequence[Task], fields: Mapping[Location, tuple[str, str]] | None = None
) -> list[tuple[Task, Problem]]:
    """Names are unique in a manifest set, and so is content: a second copy would never be sent.

    Each problem is reported on the later manifest and names the earlier one. `fields` gives,
    by task location, the field paths of the name and the request where they are not
    `metadata.name` and `spec` (a clip of a set).
    """
    found: list[tuple[Task, Problem]] = []
    by_name: dict[str, Task] = {}
    by_hash: dict[str, Task] = {}
    for task in tasks:
        name_field, spec_field = (fields or {}).get(task.location, ("metadata.name", "spec"))
        first = by_name.setdefault(task.name, task)
        if first is not task:
            message = (
                f"name '{task.name}' is already used at {first.name_location}; "
                "names must be unique across all manifests"
            )
            found.append((task, Problem(task.name_location, name_field, message)))
        twin = by_hash.setdefault(task.hash, task)
        if twin is not task:
            message = (
                f"same request as '{twin.name}' at {twin.location} (task {task.short_hash}); "
                "the second copy would never be sent: remove one, or change what it asks for"
            )
            found.append((task, Problem(task.location, spec_field, message)))
    return found
