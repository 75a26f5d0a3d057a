"""What this process created, recorded when it was created: the only things aelab removes.

A refused start (a bad setting, missing data, a mistyped checkpoint) is undone by discard(): from
a dir that was there before, only what this process put there goes (its lock file, Hydra's
.hydra/ and log); the dir itself goes only if this process made it. Nothing is inferred from what
a dir holds, so a user's dir and files survive every refusal byte for byte. A run that has
started (it wrote its status) or a sweep job that has ended is kept: a result is never discarded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

# How a record is removed: "file" unlinked, "dir" removed once empty (so anything in it that this
# process did not create keeps it), "tree" removed with its contents (a dir that only this
# process wrote into: Hydra's .hydra/, a sweep's job dir).
_records: dict[Path, str] = {}
_entries_before: dict[Path, frozenset[str]] = {}  # a claimed sweep dir → what it held then
_kept: set[Path] = set()
_pid = os.getpid()  # a forked child inherits the record, not the right to act on it


def absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(path))


def make_dir(path: Path) -> None:
    """mkdir -p path, recording each dir this call made, path and its new parents alike: a
    refused start takes away the empty parents it made (discard), never one that was there."""
    path = absolute(path)
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another process made it meanwhile: theirs, not ours
            if not directory.is_dir():
                raise
        else:
            _records[directory] = "dir"
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def record(path: Path, kind: str = "file") -> None:
    """Path was just created by this process (e.g. opened with O_EXCL)."""
    _records[absolute(path)] = kind


def expect(path: Path, kind: str = "file") -> None:
    """Path is about to be created for this process (by Hydra, while this process holds the
    dir): recorded if it does not exist yet."""
    if not os.path.lexists(path):
        record(path, kind)


def expect_entries(directory: Path) -> None:
    """Entries that appear in directory from now on are this process's (a claimed sweep dir,
    whose job dirs Hydra makes before aelab sees them); what it holds now is not."""
    directory = absolute(directory)
    _entries_before[directory] = frozenset(os.listdir(directory))


def keep(path: Path) -> None:
    """Path is a result now: discard() leaves it, and every dir above it, alone."""
    _kept.add(absolute(path))


def is_kept(path: Path) -> bool:
    path = absolute(path)
    return any(kept == path or path in kept.parents for kept in _kept)


def kind_of(path: Path) -> str | None:
    """How this process may remove path, or None if it did not create path."""
    before = _entries_before.get(path.parent)
    new_entry = before is not None and path.name not in before and path.is_dir()
    return _records.get(path) or ("tree" if new_entry else None)


def discard(*roots: Path | None) -> None:
    """Undo a refused start in each root: remove what this process created there (deepest
    first), the root itself only if this process made it; nothing at all where a result is kept."""
    if os.getpid() != _pid:
        return
    for root in (absolute(r) for r in roots if r is not None):
        if is_kept(root):
            continue
        inside = sorted((p for p in _records if root in p.parents), key=lambda p: -len(p.parts))
        made_above = [p for p in root.parents if _records.get(p) == "dir"]  # deepest first
        for path in [*inside, root, *made_above]:  # a dir is empty when its turn comes
            remove(path, kind_of(path))
            if not os.path.lexists(path):  # a dir still holding others' entries stays recorded
                _records.pop(path, None)


def remove(path: Path, kind: str | None) -> None:
    with contextlib.suppress(OSError):
        if kind == "file":
            path.unlink(missing_ok=True)
        elif kind == "dir":
            path.rmdir()  # fails while anything this process did not create is inside
        elif kind == "tree":
            shutil.rmtree(path)
