"""Cache files that are checked when read and never cost more than speed.

A cache file is torch.save's bytes followed by a trailer: MAGIC and the SHA-256 of those bytes.
Reading verifies the whole payload against it, so a file cut short, emptied or damaged in the
middle is found (a recorded length would miss the middle), reported by name, and rebuilt by the
caller. Writing goes through a temporary file beside the target that this process created (its
exact name is known), renamed into place; if the write fails (a full disk, a file-size limit, a
read-only dir) only that file is removed, a warning names the cache, and the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MAGIC = b"aelab-sha256:"
TRAILER = len(MAGIC) + 32
CHUNK = 1 << 20


def read_cache(path: Path, valid: Callable[[Any], bool] = lambda _: True) -> Any | None:
    """The object cached at path; None when there is none, or (with a warning naming the file)
    when it fails its checksum, cannot be loaded or is not `valid`: the caller rebuilds it."""
    if not path.is_file():
        return None
    try:
        problem = _checksum_problem(path)
        if problem is None:
            cached = torch.load(path, weights_only=True)
            problem = None if valid(cached) else "it holds other contents than expected"
    except Exception as error:  # a file that passes its checksum and still will not load
        problem = f"it cannot be loaded ({type(error).__name__}: {str(error)[:120]})"
    if problem is None:
        return cached
    log.warning("The cache file %s is broken (%s); rebuilding it.", path, problem)
    return None


def _checksum_problem(path: Path) -> str | None:
    """Why path's payload does not match its trailer, or None when it does."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < TRAILER:
            return f"it is {size} bytes long, too short to hold a checksum"
        file.seek(size - TRAILER)
        trailer = file.read(TRAILER)
        if not trailer.startswith(MAGIC):
            return "its checksum is missing: it is truncated or was not written by aelab"
        file.seek(0)
        digest, left = hashlib.sha256(), size - TRAILER
        buffer = memoryview(bytearray(CHUNK))
        while left:
            read = file.readinto(buffer[: min(CHUNK, left)])
            if not read:
                return "it ended while being read"
            digest.update(buffer[:read])
            left -= read
    if digest.digest() != trailer[len(MAGIC) :]:
        return "its contents do not match their checksum: the file is damaged"
    return None


def write_cache(value: Any, path: Path) -> bool:
    """Cache value at path (atomically, with its checksum); False, with a warning, if it could not
    be written. Only the temporary file this call created is ever removed."""
    payload = io.BytesIO()
    torch.save(value, payload)
    data = payload.getbuffer()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        temporary = Path(name)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.write(MAGIC + hashlib.sha256(data).digest())
        temporary.replace(path)
        return True
    except OSError as error:  # a full or read-only cache dir costs speed next time, not this run
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        log.warning(
            "Could not write the cache file %s (%s); the run goes on without it (set "
            "paths.cache_dir to a writable dir with free space to cache).",
            path,
            error,
        )
        return False
