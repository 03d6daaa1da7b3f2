"""The file state: a committed JSON snapshot, its write-ahead journal, and a lock file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from reconciler.collector import collector_paused
from reconciler.state.model import (
    READABLE_VERSIONS,
    STATE_VERSION,
    LockHolder,
    Recording,
    State,
    StateEntry,
    StateError,
    StateExistsError,
    StateLockedError,
    UnmatchedCallback,
    compact_json,
    entry_fields,
    holder_of_this_process,
    is_task_hash,
    parse_entry,
    plain_json,
    require_own_hash,
)

if TYPE_CHECKING:
    from reconciler.callbacks import Callback, StoredCallback

__all__ = ["StateStore"]

# A lockless reader (e.g. `plan`) can race a compaction; it re-reads, but not forever.
_LOAD_ATTEMPTS = 20
_TAIL_CHUNK = 8192
# A receiver compacts the journal once it is this long (about 500 callbacks).
_RECEIVER_JOURNAL_BYTES = 256 << 10
_MAX_LINKS = 40  # as Linux's MAXSYMLINKS
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise turn "\n" into "\r\n"


class _Unchecked:
    """The snapshot has not been read by this store yet."""


_UNCHECKED = _Unchecked()
_FileIdentity = tuple[int, int, int, int]


def _identity(status: os.stat_result) -> _FileIdentity:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _link_target(path: Path) -> Path:
    """Where the chain of symbolic links starting at `path` ends; `path` if it is no link.

    The end need not exist yet (a link to a state not created yet). Only the last component is
    followed: links among the folders lead to the same file either way. A loop is left as it
    is, for opening it to fail with "too many levels of symbolic links".
    """
    target = path
    for _ in range(_MAX_LINKS):
        try:
            link = os.readlink(target)
        except OSError:  # not a link (or gone): the chain ends here
            return target
        target = Path(os.path.join(os.path.dirname(target), link))
    return path


class StateStore:
    """The state on disk: `path` (snapshot), `path.journal` (write-ahead log), `path.lock`.

    If `path` is a symbolic link (or a chain of them), `target` is the file it leads to, and
    the journal and lock files are beside `target`; messages name both, as `shown`:
    `reconciler-state.json (-> shared/state.json)`.

    Callers hold `lock()` around every load ... append ... compact sequence. Within one process
    the methods are thread-safe. A State is the snapshot with the journal folded in, in order;
    an entry is durable once `append` returns.
    """

    def __init__(self, path: Path, *, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        # A link is followed (when the store is made): its target is read, replaced and locked,
        # and the journal and the lock live beside it, so every name of one state shares them.
        self.target = _link_target(self.path)
        self.shown = str(self.path) if self.target == self.path else f"{path} (-> {self.target})"
        self.journal_path = Path(f"{self.target}.journal")
        self.lock_path = Path(f"{self.target}.lock")
        self.lock_info_path = Path(f"{self.target}.lock.info")
        self.lock_timeout = lock_timeout
        self._file_lock = filelock.FileLock(self.lock_path, timeout=lock_timeout)
        self._mutex = threading.RLock()
        # The snapshot this store last read whole and found valid (None: it was missing).
        self._checked_snapshot: _FileIdentity | _Unchecked | None = _UNCHECKED
        # The last State loaded, keyed by the bytes it was read from (see _Cache).
        self._cache: _Cache | None = None

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r})"

    # -- lock -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the cross-process state lock; re-entrant within one thread."""
        outermost = not self._file_lock.is_locked
        try:
            self._file_lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            raise StateLockedError.timed_out(
                self.shown,
                self.lock_holder(),
                self.lock_timeout,
                "an unknown process (it recorded no holder details)",
            ) from None
        except OSError as error:
            raise StateError(f"{self.lock_path}: cannot take the state lock: {error}") from error
        try:
            if outermost:
                self._write_lock_info()
            yield
        finally:
            # The holder details go before the lock does, so they never describe the next holder.
            if outermost:
                with contextlib.suppress(OSError):
                    os.unlink(self.lock_info_path)
            self._file_lock.release()

    def lock_holder(self) -> LockHolder | None:
        """Who recorded holding the lock, if anyone did and the record is readable."""
        try:
            info = json.loads(self.lock_info_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict):
            return None
        host, pid, since = info.get("host"), info.get("pid"), info.get("since")
        run_url = info.get("runUrl")
        if (
            isinstance(host, str)
            and isinstance(pid, int)
            and isinstance(since, str)
            and isinstance(run_url, str | None)
        ):
            return LockHolder(host=host, pid=pid, since=since, run_url=run_url)
        return None

    def _write_lock_info(self) -> None:
        holder = holder_of_this_process()
        info: dict[str, object] = {"host": holder.host, "pid": holder.pid, "since": holder.since}
        if holder.run_url:
            info["runUrl"] = holder.run_url
        temporary = Path(f"{self.lock_info_path}.{secrets.token_hex(4)}.tmp")
        try:
            temporary.write_text(json.dumps(info, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(temporary, self.lock_info_path)
        except OSError:
            # Only a courtesy for whoever waits next; the lock itself is held.
            with contextlib.suppress(OSError):
                temporary.unlink()

    # -- read -----------------------------------------------------------------------------------

    def load(self) -> State:
        """The snapshot (a missing file is an empty state) with the journal folded in."""
        with self._mutex, collector_paused():
            for _ in range(_LOAD_ATTEMPTS):
                state = self._load_consistent()
                if state is not None:
                    return state
            raise StateError(
                f"{self.shown}: the state kept changing while being read; "
                "is another process writing it without the lock? Try again"
            )

    def _load_consistent(self) -> State | None:
        # Snapshot first, journal second, then check the snapshot was not replaced meanwhile:
        # a compaction replaces the snapshot before it removes the journal, so a reader that
        # missed the journal always sees a new snapshot, and reads again.
        try:
            handle = open(self.target, "rb")  # noqa: SIM115  (kept open: it pins the inode compared)
        except FileNotFoundError:
            journal = self._read_journal()
            if self.target.exists():
                return None
            state = self._fold(_Snapshot(), journal)
            self._checked_snapshot = None
            return state
        except OSError as error:
            raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
        with handle:
            try:
                data = handle.read()
                opened = os.fstat(handle.fileno())
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            snapshot_key = hash(data)
            journal = self._read_journal()
            try:
                current = os.stat(self.target)
            except FileNotFoundError:
                return None
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            if not os.path.samestat(opened, current):
                return None
        end = _journal_valid_end(journal)
        cache = self._cache
        if (
            cache is not None
            and cache.snapshot == snapshot_key
            and end >= cache.consumed
            and hash(journal[: cache.consumed]) == cache.journal
        ):
            # The same snapshot and the journal it was folded with, and perhaps more lines:
            # only those are read (a receiver appends one per callback; verify loads twice).
            # With none, the State itself (immutable) is what was read.
            if end == cache.consumed:
                self._checked_snapshot = _identity(opened)
                return cache.state
            first_line = journal.count(b"\n", 0, cache.consumed) + 1
            state = self._fold(_Snapshot.of(cache.state), journal[cache.consumed : end], first_line)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise StateError(
                    f"{self.shown}: the state file is not UTF-8 ({error}); it was left untouched; "
                    "restore it (e.g. from Git) or repair it by hand"
                ) from None
            del data  # a large state is parsed from text alone: its bytes need not stay in memory
            state = self._fold(self._parse_snapshot(text), journal[:end])
        self._cache = _Cache(snapshot_key, end, hash(journal[:end]), state)
        self._checked_snapshot = _identity(opened)
        return state

    def _fold(self, snapshot: _Snapshot, journal: bytes, first_line: int = 1) -> State:
        # The journal never records the sandbox flag: only the snapshot does, so a journal
        # without a snapshot (a first apply killed, in versions before `create`) is real.
        entries, recordings, unmatched = snapshot.entries, snapshot.recordings, snapshot.unmatched
        unmatched_ids = {callback.id for callback in unmatched}
        for line in self._parse_journal(journal, first_line):
            if isinstance(line, StateEntry):
                entries[line.hash] = line
            elif isinstance(line, str):  # a removal: the task was marked but never sent
                # Evidence says the service processed it: nothing apply records erases that.
                if line not in recordings:
                    entries.pop(line, None)
            elif isinstance(line, UnmatchedCallback):
                if line.id not in unmatched_ids:
                    unmatched.append(line)
                    unmatched_ids.add(line.id)
            else:
                key, recording = line
                held = recordings.setdefault(key, [])
                if all(r.evidence != recording.evidence for r in held):
                    held.append(recording)
        return State._adopt(
            entries,
            sandbox=snapshot.sandbox,
            recordings={key: tuple(held) for key, held in recordings.items() if key in entries},
            unmatched=tuple(unmatched),
        )

    def _read_journal(self) -> bytes:
        try:
            return self.journal_path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as error:
            raise StateError(f"{self.journal_path}: cannot read the journal: {error}") from error

    def _parse_snapshot(self, data: str | bytes) -> _Snapshot:
        """The snapshot's entries, evidence and sandbox flag.

        `"sandbox": true` marks a sandbox state; a real state has no such field. Any other
        value (`false` included) is refused: no reconciler writes it, so it was typed by hand,
        and guessing which kind of state was meant could mix sandbox tasks with real ones.
        """
        where = self.shown
        untouched = "it was left untouched; restore it (e.g. from Git) or repair it by hand"
        try:
            document = _loads_unique(data)
        except DuplicateKeyError as error:
            line, column = error.place()
            raise StateError(
                f"{where}:{line}:{column}: duplicate key {json.dumps(error.key)} in the state "
                f"file (a merge gone wrong?): which one is meant cannot be told; {untouched}"
            ) from None
        except json.JSONDecodeError as error:
            problem = "empty (truncated?)" if not data.strip() else f"not valid JSON: {error.msg}"
            raise StateError(
                f"{where}:{error.lineno}:{error.colno}: the state file is {problem}; {untouched}"
            ) from None
        except UnicodeDecodeError as error:
            raise StateError(
                f"{where}: the state file is not UTF-8 ({error}); {untouched}"
            ) from None
        if not isinstance(document, dict):
            raise StateError(f"{where}: the state file is not a JSON object; {untouched}")
        version = document.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise StateError(_version_message(where, version))
        known = {"version", "tasks", "sandbox"} | ({"unmatched"} if version >= 2 else set())
        unknown = sorted(set(document) - known)
        if unknown:
            raise StateError(
                f"{where}: unknown top-level field(s) {', '.join(unknown)} in a version "
                f"{version} state file; {untouched}"
            )
        sandbox = document.get("sandbox", False)
        if "sandbox" in document and sandbox is not True:
            raise StateError(
                f"{where}: 'sandbox' must be true (a sandbox state) or absent (a real state), "
                f"not {json.dumps(sandbox)}; {untouched}"
            )
        tasks = document.get("tasks")
        if not isinstance(tasks, dict):
            raise StateError(f"{where}: 'tasks' must be a JSON object; {untouched}")
        snapshot = _Snapshot(sandbox=sandbox is True)
        for key, fields in tasks.items():
            if version >= 2 and isinstance(fields, dict) and "recordings" in fields:
                fields = dict(fields)
                listed = fields.pop("recordings")
                snapshot.recordings[key] = _parse_recordings(
                    listed, f"{where}: task {key}", untouched
                )
            elif isinstance(fields, dict) and version < 2 and "taskExternalId" in fields:
                raise StateError(
                    f"{where}: task {key}: unknown field(s) taskExternalId in a version 1 state "
                    f"file; {untouched}"
                )
            snapshot.entries[key] = parse_entry(key, fields, where, untouched)
        listed = document.get("unmatched", [])
        if not isinstance(listed, list):
            raise StateError(f"{where}: 'unmatched' must be a JSON array; {untouched}")
        for number, fields in enumerate(listed, start=1):
            try:
                snapshot.unmatched.append(UnmatchedCallback.from_json(fields))
            except ValueError as error:
                raise StateError(
                    f"{where}: unmatched callback {number}: {error}; {untouched}"
                ) from None
        return snapshot

    def _parse_journal(
        self, data: bytes, first_line: int = 1
    ) -> Iterator[StateEntry | str | tuple[str, Recording] | UnmatchedCallback]:
        """Lines in journal order: an entry, a removal (a bare hash), evidence for a task
        (hash, recording), or an unmatched callback."""
        where = str(self.journal_path)
        untouched = (
            "the journal was left untouched; entries before this line are intact, "
            "repair or remove the line by hand"
        )
        end = _journal_valid_end(data)
        lines = data[:end].split(b"\n")
        lines.pop()  # what follows the last "\n": empty, since `end` is a line end
        for number, line in enumerate(lines, start=first_line):
            at = f"{where}:{number}"
            try:
                fields = _loads_unique(line)
            except DuplicateKeyError as error:
                raise StateError(
                    f"{at}:{error.place()[1]}: duplicate key {json.dumps(error.key)}; {untouched}"
                ) from None
            except json.JSONDecodeError as error:
                raise StateError(
                    f"{at}:{error.colno}: not valid JSON: {error.msg}; {untouched}"
                ) from None
            except UnicodeDecodeError as error:
                raise StateError(f"{at}: not UTF-8 ({error}); {untouched}") from None
            if not isinstance(fields, dict):
                raise StateError(f"{at}: a journal line must be a JSON object; {untouched}")
            if "unmatched" in fields and len(fields) == 1:
                try:
                    yield UnmatchedCallback.from_json(fields["unmatched"])
                except ValueError as error:
                    raise StateError(f"{at}: {error}; {untouched}") from None
                continue
            key = fields.pop("hash", None)
            if not isinstance(key, str):
                raise StateError(f"{at}: the line has no task 'hash'; {untouched}")
            if fields == {"removed": True}:
                yield key
                continue
            if set(fields) == {"recording"} and is_task_hash(key):
                try:
                    yield key, Recording.from_json(fields["recording"])
                except ValueError as error:
                    raise StateError(f"{at}: {error}; {untouched}") from None
                continue
            yield parse_entry(key, fields, where, untouched, number)

    def exists(self) -> bool:
        """Whether there is a state here: its snapshot, or a journal (a first apply killed)."""
        return os.path.exists(self.target) or os.path.exists(self.journal_path)

    def missing_reason(self) -> str:
        """Why a state might not be here, for the message that refuses to apply without it."""
        return (
            f"(in {self.path.resolve().parent}). Either this is the wrong directory (or --state / "
            "RECONCILER_STATE points elsewhere), or the state was not checked out (a state file "
            "is committed beside the manifests)"
        )

    def created_hint(self) -> str:
        """What to do with a state just created, for `reconciler init`."""
        return "Commit it beside your manifests; every apply records what it submitted there."

    def close(self) -> None:
        """Nothing to release: the file is opened per operation."""

    def interrupt(self) -> None:
        """Nothing to cut short: a file's reads and writes do not wait on a server."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- write ----------------------------------------------------------------------------------

    def create(self, *, sandbox: bool = False) -> State:
        """Write an empty state (for `reconciler init`, or a sandbox apply's first run).

        Takes the lock (re-entrant, so a caller may already hold it); refuses with
        StateExistsError if a snapshot or a journal is already there.
        """
        if os.path.isdir(self.target):  # before the lock, which would leave DIR.lock behind
            raise StateError(
                f"{self.shown} is a directory, not a state file; name a file (such as "
                f"{self.path / 'reconciler-state.json'}); nothing was changed"
            )
        with self.lock(), self._mutex:
            if os.path.islink(self.target):  # where _link_target gave up: a loop
                raise StateError(
                    f"{self.shown}: a loop of symbolic links, not a state file; nothing was changed"
                )
            if os.path.lexists(self.target):
                raise StateExistsError(f"{self.shown}: a state already exists; nothing was changed")
            if os.path.lexists(self.journal_path):
                raise StateExistsError(
                    f"{self.journal_path}: the journal of a state already exists (an apply was "
                    "stopped before it compacted); nothing was changed"
                )
            state = State(sandbox=sandbox)
            self._replace_snapshot(_snapshot_bytes(state))
            return state

    def claim(self, entries: Sequence[StateEntry], *, seen: State | None = None) -> frozenset[str]:
        """Make the write-ahead marks `entries` durable; every one is claimed.

        The caller holds the lock, and only lock holders write the file, so no other applier
        can have claimed any of these tasks since the caller loaded the state.
        """
        self.append(entries)
        return frozenset(entry.hash for entry in entries)

    def append(self, entries: Sequence[StateEntry], *, removed: Sequence[str] = ()) -> None:
        """Make `entries` durable in the journal: one write and one fsync for the whole batch.

        `removed` hashes are dropped from the state (write-ahead marks of tasks that were
        never sent, e.g. after Ctrl-C or a final error), after `entries` in the same batch.
        """
        if not entries and not removed:
            return
        self._append_lines(
            [_journal_line(entry) for entry in entries] + [_removal_line(h) for h in removed]
        )

    def record_callback(self, callback: Callback, received_at: str) -> StoredCallback:
        """Match one callback against the state and make the outcome durable (one lock hold).

        Returns once the evidence (or the unmatched record) is in the journal, fsynced: only
        then may the receiver answer 200. A duplicate changes nothing.
        """
        from reconciler.callbacks import StoredCallback, decide

        with self.lock(), self._mutex:
            if not self.exists():
                raise StateError(f"{self.shown}: the state does not exist; nothing was written")
            state = self.load()
            match, recording, unmatched = decide(
                callback, state.entries.values(), state.recordings_of, received_at
            )
            if unmatched is not None and all(c.id != unmatched.id for c in state.unmatched):
                self._append_lines([_unmatched_line(unmatched)])
                stored = StoredCallback(None, match.reason, False)
            elif recording is not None and match.entry is not None:
                self._append_lines([_recording_line(match.entry.hash, recording)])
                stored = StoredCallback(match.entry, None, False)
            else:
                return StoredCallback(match.entry, match.reason, True)
            # Every callback reads the journal whole: a long-running receiver folds it into
            # the snapshot now and then, so that stays short.
            with contextlib.suppress(OSError):
                if os.stat(self.journal_path).st_size > _RECEIVER_JOURNAL_BYTES:
                    self.compact()
            return stored

    def record_evidence(self, recordings: Sequence[tuple[str, Recording]]) -> int:
        """Add evidence for tasks (e.g. found in the bucket); returns how many were new.

        The caller need not hold the lock: this takes it for one short hold.
        """
        with self.lock(), self._mutex:
            state = self.load()
            lines, seen = [], set()
            for key, recording in recordings:
                if key not in state.entries:
                    raise StateError(
                        f"{self.shown}: no task {key[:12]} in the state; nothing was written"
                    )
                held = state.recordings_of(key)
                if recording.evidence in seen or any(
                    r.evidence == recording.evidence for r in held
                ):
                    continue
                seen.add(recording.evidence)
                lines.append(_recording_line(key, recording))
            self._append_lines(lines)
            return len(lines)

    def _append_lines(self, lines: Sequence[bytes]) -> None:
        """Append whole journal lines with one write and one fsync (the lock is held)."""
        if not lines:
            return
        batch = b"".join(lines)
        with self._mutex:
            self._check_snapshot()
            try:
                # 0o666 and the umask, like the snapshot (os.open's default 0o777 would make
                # Git record the committed journal as executable); an existing one keeps its mode.
                fd = os.open(
                    self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o666
                )
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot open the journal: {error}"
                ) from error
            try:
                size = os.fstat(fd).st_size
                # A crash mid-append leaves a torn last line; appending after it would glue
                # this batch onto it and make both unreadable.
                valid = _journal_tail_end(fd, size) if size else 0
                if valid != size:
                    os.ftruncate(fd, valid)
                try:
                    _write_all(fd, batch)
                    os.fsync(fd)
                except OSError:
                    # The caller acts on nothing in this batch, so the journal must not keep it.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, valid)
                    raise
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot append to the journal: {error}"
                ) from error
            finally:
                os.close(fd)
            if not size:
                self._fsync_directory()

    def _check_snapshot(self) -> None:
        # A journal beside a snapshot this reconciler cannot read (a newer version, a corrupt
        # file) would be lost or misread, so read it whole once; then one stat per batch.
        try:
            current: _FileIdentity | None = _identity(os.stat(self.target))
        except FileNotFoundError:
            current = None
        except OSError as error:
            raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
        if current != self._checked_snapshot:
            self.load()

    def compact(self) -> State:
        """Fold the journal into the snapshot, then remove the journal; returns the folded State.

        A crash between the two leaves a journal that is already in the snapshot: replaying it
        again changes nothing, because every line is a whole entry.
        """
        with self._mutex:
            state = self.load()
            if not self.journal_path.exists():
                return state
            data = _snapshot_bytes(state)
            try:
                current = self.target.read_bytes()
            except FileNotFoundError:
                current = None
            except OSError as error:
                raise StateError(f"{self.shown}: cannot read the state file: {error}") from error
            if current != data and (current is not None or state.entries):
                self._replace_snapshot(data)
            self._remove_leftovers()
            try:
                os.unlink(self.journal_path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise StateError(
                    f"{self.journal_path}: cannot remove the journal: {error}"
                ) from error
            self._fsync_directory()
            return state

    def write(self, state: State) -> None:
        """Replace the snapshot with `state` (for `state rm` and `mark-submitted`).

        The journal is folded in first, so no journal line can later undo this write; a state
        file this reconciler cannot read is refused, never overwritten.
        """
        with self._mutex:
            current = self.compact()
            if current.sandbox != state.sandbox and self.exists():
                kinds = ("a real", "a sandbox")
                raise StateError(
                    f"{self.shown} is {kinds[current.sandbox]} state; it cannot be replaced by "
                    f"{kinds[state.sandbox]} state (sandbox and real tasks never mix); "
                    "nothing was changed"
                )
            self._replace_snapshot(_snapshot_bytes(state))

    def _replace_snapshot(self, data: bytes) -> None:
        temporary = Path(f"{self.target}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                mode = stat.S_IMODE(os.stat(self.target).st_mode)
            except FileNotFoundError:
                mode = None
            # 0o666 and the umask, as any editor would create it: it is a file users commit.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
            try:
                if mode is not None and hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.target)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(error, OSError):
                raise StateError(f"{self.shown}: cannot write the state file: {error}") from error
            raise
        # What was just written is valid by construction: appends need not read it back.
        try:
            self._checked_snapshot = _identity(os.stat(self.target))
        except OSError:
            self._checked_snapshot = _UNCHECKED
        self._fsync_directory()

    def _remove_leftovers(self) -> None:
        # Temporary files of writers killed mid-write. Only lock holders write, and the caller
        # holds the lock, so none of these is still being written.
        leftover = re.compile(re.escape(self.target.name) + r"(\.lock\.info)?\.[0-9a-f]{8}\.tmp")
        with contextlib.suppress(OSError):
            for name in os.listdir(self.target.parent):
                if leftover.fullmatch(name):
                    with contextlib.suppress(OSError):
                        os.unlink(self.target.parent / name)

    def _fsync_directory(self) -> None:
        # Makes a rename, a new journal or a removed journal survive a power cut. Windows cannot
        # open a directory, and NTFS journals its metadata anyway.
        if os.name != "posix":
            return
        directory = self.target.parent
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise StateError(f"{directory}: cannot sync the state's directory: {error}") from error


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice; json.loads would silently keep the last value."""

    def __init__(self, key: str, text: str = "", at: int = 0) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.text = text
        self.at = at

    def place(self) -> tuple[int, int]:
        """The (line, column) of the second occurrence, both from 1."""
        line = self.text.count("\n", 0, self.at) + 1
        return line, self.at - self.text.rfind("\n", 0, self.at)


class _Duplicate(Exception):
    """Raised by the fast parse's hook: some object repeats a key (found again, with its place)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _Duplicate
    return document


def _loads_unique(data: str | bytes) -> Any:
    """json.loads, refusing a repeated key in any object (DuplicateKeyError, with its place).

    The C parser does the work; only a document that does repeat a key is walked again, to
    find where.
    """
    try:
        return json.loads(data, object_pairs_hook=_unique_pairs)
    except _Duplicate:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        _raise_first_repeated_key(text)
        raise DuplicateKeyError("?") from None  # not reached: the hook saw a repeated key


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _raise_first_repeated_key(text: str) -> None:
    """Walk the JSON `text` and raise DuplicateKeyError at the first key an object repeats.

    Only a document the C parser has read up to a repeated key gets here, so the syntax
    before that key is valid; objects and arrays are walked here, scalars (keys included)
    parsed by json's own raw_decode.
    """
    decoder = json.JSONDecoder()

    def skip(at: int) -> int:
        return _JSON_SPACE.match(text, at).end()  # type: ignore[union-attr]  # matches ""

    def value_end(at: int) -> int:
        at = skip(at)
        if text[at] == "{":
            seen: set[str] = set()
            at = skip(at + 1)
            while text[at] != "}":
                key, end = decoder.raw_decode(text, at)
                if key in seen:
                    raise DuplicateKeyError(key, text, at)
                seen.add(key)
                at = skip(value_end(skip(end) + 1))  # the value after the ':'
                at = skip(at + 1) if text[at] == "," else at
            return at + 1
        if text[at] == "[":
            at = skip(at + 1)
            while text[at] != "]":
                at = skip(value_end(at))
                at = skip(at + 1) if text[at] == "," else at
            return at + 1
        return int(decoder.raw_decode(text, at)[1])

    value_end(0)


def _version_message(where: str, version: object) -> str:
    known = " and ".join(str(v) for v in READABLE_VERSIONS)
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        return (
            f"{where}: the state file is version {version}, written by a newer reconciler; "
            f"this reconciler understands versions {known} only. Upgrade reconciler; "
            "the file was left untouched"
        )
    return (
        f"{where}: the state file has version {json.dumps(version)}; this reconciler understands "
        f"versions {known} only; the file was left untouched"
    )


def _document(state: State) -> dict[str, Any]:
    tasks = {}
    for key, entry in state.entries.items():
        fields = entry_fields(entry)
        recordings = state.recordings_of(key)
        if recordings:  # in the order they arrived: a diff shows new evidence at the end
            fields["recordings"] = [recording.to_json() for recording in recordings]
        tasks[key] = fields
    document: dict[str, Any] = {"version": STATE_VERSION, "tasks": tasks}
    if state.sandbox:  # only then: a real state's file stays what it always was
        document["sandbox"] = True
    if state.unmatched:
        document["unmatched"] = [callback.to_json() for callback in state.unmatched]
    return document


@dataclass
class _Snapshot:
    """What a snapshot holds, as the journal is folded into it."""

    sandbox: bool = False
    entries: dict[str, StateEntry] = field(default_factory=dict)
    recordings: dict[str, list[Recording]] = field(default_factory=dict)
    unmatched: list[UnmatchedCallback] = field(default_factory=list)

    @classmethod
    def of(cls, state: State) -> _Snapshot:
        """A copy of `state` to fold more journal lines into (the State itself stays as it is)."""
        return cls(
            state.sandbox,
            dict(state.entries),
            {key: list(held) for key, held in state.recordings.items()},
            list(state.unmatched),
        )


@dataclass(frozen=True)
class _Cache:
    """The last State a store loaded, and what it was read from: the snapshot's bytes and the
    first `consumed` bytes of the journal (their hashes: equal bytes give equal hashes, and
    anything else differs but for a collision no one can aim at, since bytes hash with a key
    random per process). Keyed by content, not by file identity: an inode and a timestamp can be
    reused within a clock tick, and a wrong state would be a clip sent twice."""

    snapshot: int
    consumed: int
    journal: int
    state: State


def _parse_recordings(listed: object, where: str, untouched: str) -> list[Recording]:
    if not isinstance(listed, list):
        raise StateError(f"{where}: 'recordings' must be a JSON array; {untouched}")
    recordings = []
    for number, fields in enumerate(listed, start=1):
        try:
            recordings.append(Recording.from_json(fields))
        except ValueError as error:
            raise StateError(f"{where}: recording {number}: {error}; {untouched}") from None
    return recordings


def _recording_line(key: str, recording: Recording) -> bytes:
    """`compact_json({"hash": key, "recording": recording.to_json()})` and a newline, written
    field by field in compact_json's sorted order: verify records one per file it looks for
    (3,000 lines in 16 ms, where compact_json took 42 ms). tests/test_state.py holds the two to
    the same text for any recording."""
    url, duration, size = recording.download_url, recording.duration, recording.file_size
    text = (
        '{"hash":'
        + _json_string(key)
        + ',"recording":{'
        + ("" if url is None else '"downloadUrl":' + _json_string(url) + ",")
        + ("" if duration is None else '"duration":' + _json_string(duration) + ",")
        + '"evidence":'
        + _json_string(recording.evidence)
        + ("" if size is None else ',"fileSize":' + _json_string(size))
        + ',"format":'
        + _json_string(recording.format)
        + ',"receivedAt":'
        + _json_string(recording.received_at)
        + ',"source":'
        + _json_string(recording.source.value)
        + ',"status":'
        + _json_string(recording.status)
        + "}}\n"
    )
    return text.encode("utf-8")


def _unmatched_line(callback: UnmatchedCallback) -> bytes:
    return (compact_json({"unmatched": callback.to_json()}) + "\n").encode("utf-8")


def _snapshot_bytes(state: State) -> bytes:
    text = json.dumps(
        _document(state),
        sort_keys=True,
        indent=2,
        ensure_ascii=False,
        allow_nan=False,
        default=plain_json,
    )
    return (text + "\n").encode("utf-8")


def _journal_line(entry: StateEntry) -> bytes:
    if not isinstance(entry, StateEntry):
        raise TypeError(f"append takes StateEntry values, not {type(entry).__name__}")
    fields = entry_fields(entry)
    fields["hash"] = entry.hash
    try:
        # Serialised exactly as the snapshot will be (UTF-8, no NaN), so whatever the journal
        # accepts, a later compaction can write.
        line = (compact_json(fields) + "\n").encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"task {entry.hash}: request cannot be stored: {error}") from error
    require_own_hash(entry)  # and whatever it accepts, a later load accepts
    return line


def _removal_line(hash: str) -> bytes:
    if not is_task_hash(hash):
        raise ValueError(f"not a task hash: {hash!r}")
    return (
        json.dumps({"hash": hash, "removed": True}, sort_keys=True, separators=(",", ":")).encode()
        + b"\n"
    )


def _journal_tail_end(fd: int, size: int) -> int:
    """`_journal_valid_end` of the journal open at `fd`, reading only as much of its end as needed."""
    chunk = _TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        os.lseek(fd, start, os.SEEK_SET)  # not os.pread: Windows has none
        tail = os.read(fd, size - start)
        last = tail.rfind(b"\n")
        if start == 0 or (last > 0 and tail.rfind(b"\n", 0, last) >= 0):
            return start + _journal_valid_end(tail)
        chunk *= 2


def _journal_valid_end(data: bytes) -> int:
    """Where the readable lines of journal bytes `data` end.

    `data` is the whole journal, or a tail of it that holds the newline before its last line.

    What follows is the remains of an append whose fsync never returned, so its caller never
    acted on it: the bytes after the last newline, and a last line that is not JSON (a power cut
    can leave a block of zeros where data should be).
    """
    end = data.rfind(b"\n") + 1
    if end == 0:
        return 0
    start = data.rfind(b"\n", 0, end - 1) + 1
    try:
        json.loads(data[start:end])
    except ValueError:
        return start
    return end


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
