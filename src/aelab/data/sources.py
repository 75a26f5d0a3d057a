"""Where images come from: CIFAR-10 through torchvision, or any image folder.

Every source returns its parts ("train" and "test", or "all" for a folder without them) as uint8
tensors (N, 3, H, W), decoded once, and a Listing: every file it was read from with its size and
modification time, in decoding order (the cache key and the run's data identity come from it).
A decoded folder is cached under cache_dir, never inside the data root, which may be read-only.
Only regular files are read: a FIFO, socket, device or dangling link named like an image is
skipped with a warning, never opened (opening a FIFO waits forever).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from aelab.data.cache_file import read_cache, write_cache
from aelab.data.folder_layout import IMAGE_EXTENSIONS, check_folder_root, is_image_name
from aelab.data.image_io import ImageReadError, read_rgb_uint8
from aelab.errors import AelabError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: checksummed (aelab.data.cache_file)
CIFAR10_DIR = "cifar-10-batches-py"


@dataclass(frozen=True)
class Listing:
    """The files a source's parts were read from: per part, (path relative to root, size in
    bytes, modification time in ns) in decoding order, so entry i of a part is its image i."""

    root: Path  # absolute
    files: dict[str, list[tuple[str, int, int]]]

    def paths(self, part: str) -> list[str]:
        prefix = os.path.join(str(self.root), "")
        return [prefix + relative for relative, _, _ in self.files[part]]

    def digest(self, *header: object) -> str:
        """SHA-256 (hex) of the header and every entry: what changes if any file does."""
        digest = hashlib.sha256("|".join(map(str, header)).encode())
        for part, entries in self.files.items():
            for relative, size, mtime in entries:
                digest.update(f"|{part}|{relative}|{size}|{mtime}".encode())
        return digest.hexdigest()


def load_cifar10(root: str | Path, download: bool = True) -> dict[str, torch.Tensor]:
    """The official 50,000 train and 10,000 test images, via torchvision (downloading if asked)."""
    root = Path(root).expanduser()
    parts = {}
    for part, train in (("train", True), ("test", False)):
        try:
            dataset = CIFAR10(str(root), train=train, download=download)
        except (OSError, RuntimeError) as error:
            raise AelabError(
                f"CIFAR-10 is not under {root.resolve()} and could not be "
                f"{'downloaded' if download else 'used (data.download=false)'} ({error}). "
                "Point data.root at a directory that holds cifar-10-batches-py, run once where the "
                "network is reachable, or use an image folder instead: "
                "data=folder data.root=PATH (with PATH/train/<class>/*.jpg and PATH/test/...)."
            ) from error
        parts[part] = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return parts


def cifar10_listing(root: str | Path) -> Listing:
    """The files of torchvision's CIFAR-10 copy under root (after load_cifar10 found them)."""
    root = Path(root).expanduser().resolve()
    entries = []
    for entry in sorted(os.scandir(root / CIFAR10_DIR), key=lambda entry: entry.name):
        if entry.is_file():
            found = entry.stat()
            entries.append((f"{CIFAR10_DIR}/{entry.name}", found.st_size, found.st_mtime_ns))
    return Listing(root, {"all": entries})


def list_folder_images(directory: Path) -> list[str]:
    """Image files of an ImageFolder-layout directory, in ImageFolder's (sorted) order."""
    return [path for path, *_ in _list_images(directory)]


Found = tuple[str, str, int, int]  # (listed path, real path, size, mtime in ns)


def _list_images(directory: Path) -> list[Found]:
    """Every regular image file under directory's visible class dirs, with its real path and stat.

    The listing torchvision's ImageFolder makes (os.walk following links, sorted), except that a
    directory reached twice in one class (a symlink loop, a second link) is walked once, and an
    image name that is no regular file (a FIFO, a dangling link) is skipped with a warning. Plain
    strings, not Paths: CIFAR-10 has 60,000 files, and every run lists them to check its cache.
    """
    try:
        classes = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    except OSError as error:
        raise AelabError(f"{directory} could not be listed ({error}).") from error
    if not classes:
        raise AelabError(
            f"{directory} holds no class directories. An image folder needs the layout "
            "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (or ROOT/<class>/*.jpg "
            "with data.split=pooled); put the images in such folders."
        )
    files: list[Found] = []
    empty, skipped = [], []
    for name in classes:
        found = _walk_class(os.path.join(str(directory), name), skipped)
        if not found:
            empty.append(name)
        files += found
    if skipped:
        shown = "; ".join(skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        log.warning(
            "Skipping %d file(s) under %s named like images that are no regular files: %s.",
            len(skipped),
            directory,
            shown,
        )
    if empty:
        raise AelabError(
            f"{directory}: no image files in the class directories {', '.join(empty)}. Every "
            f"class directory needs at least one image ({', '.join(IMAGE_EXTENSIONS)}); remove "
            "the empty ones."
        )
    return files


def _regular_file(entry: os.DirEntry) -> tuple[int, int] | str:
    """(size, mtime in ns) of the regular file entry names (through links), or why it is none."""
    try:
        found = entry.stat()
    except FileNotFoundError:
        return f"{entry.path} (a link to nothing)"
    except OSError as error:
        return f"{entry.path} ({error.strerror or error})"
    if not stat.S_ISREG(found.st_mode):
        return f"{entry.path} (not a regular file: a FIFO, socket or device)"
    return found.st_size, found.st_mtime_ns


def _walk_class(top: str, skipped: list[str]) -> list[Found]:
    """Regular image files under top, following links but entering each real directory once;
    image names that are no regular file are added to skipped."""
    seen: set[str] = set()
    found: list[tuple[str, list[Found]]] = []
    stack = [top]
    while stack:
        current = stack.pop()
        real_dir = os.path.realpath(current)
        if real_dir in seen:  # a symlink loop or a second link to a directory already walked
            continue
        seen.add(real_dir)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            log.warning("Skipping %s: it could not be listed (%s).", current, error)
            continue
        images, subdirs = [], []
        real_prefix = os.path.join(real_dir, "")  # concatenated: os.path.join per file costs more
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link that loops on itself: os.walk lists it as a file too
                is_dir = False
            if is_dir:
                subdirs.append(entry.path)
            elif is_image_name(name):
                regular = _regular_file(entry)
                if isinstance(regular, str):
                    skipped.append(regular)
                    continue
                real = os.path.realpath(entry.path) if entry.is_symlink() else real_prefix + name
                images.append((entry.path, real, *regular))
        stack += reversed(subdirs)  # walked in name order, so which link is kept is stable
        found.append((current, images))
    found.sort(key=lambda walked: walked[0])  # os.walk's roots, sorted as ImageFolder sorts them
    return [pair for _, images in found for pair in images]


def _each_file_once(root: Path, listed: dict[str, list[Found]]) -> dict[str, list[Found]]:
    """Each real file once: in the first place listed within a part, and in one part only.

    A file listed in several parts goes to the part whose directory really holds it, or to the
    first part (train) when none does, e.g. a link in test/ to a file in train/ stays in train.
    """
    reals = [real for found in listed.values() for _, real, *_ in found]
    if len(set(reals)) == len(reals):
        return listed
    owners: dict[str, set[str]] = {}
    for part, found in listed.items():
        for _, real, *_ in found:
            owners.setdefault(real, set()).add(part)
    real_part_dirs = {part: os.path.join(os.path.realpath(root / part), "") for part in listed}

    def owner(real: str) -> str:
        parts = owners[real]
        if len(parts) == 1:
            return next(iter(parts))
        holding = [
            part for part in listed if part in parts and real.startswith(real_part_dirs[part])
        ]
        return (holding or [part for part in listed if part in parts])[0]

    files: dict[str, list[Found]] = {}
    dropped: dict[str, int] = {}
    for part, found in listed.items():
        kept: set[str] = set()
        files[part] = []
        for entry in found:
            real = entry[1]
            if real in kept or owner(real) != part:
                dropped[part] = dropped.get(part, 0) + 1
                continue
            kept.add(real)
            files[part].append(entry)
    if dropped:
        log.warning(
            "%s lists some image files more than once (through symlinks); each is used once, "
            "in the split whose directory really holds it (train if none does). Dropped: %s.",
            root,
            ", ".join(f"{count} from {part}" for part, count in dropped.items()),
        )
    for part, paths in files.items():
        if not paths:
            raise AelabError(
                f"Every image file under {root / part} is also under another split's directory "
                "(the same files, through symlinks), so the split would be empty and the splits "
                "would share images. Give each split its own files."
            )
    return files


def load_image_folder(
    root: str | Path, image_size: int, cache_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Decode ROOT/train and ROOT/test (or ROOT itself, as part "all") into uint8 tensors."""
    return decode_image_folder(list_image_folder(root), image_size, cache_dir)


def list_image_folder(root: str | Path) -> Listing:
    """The image files of ROOT/train and ROOT/test (or ROOT itself, as part "all").

    Each real file is listed once, in one part only: symlinks cannot repeat an image or put
    a training image into the test split.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise AelabError(
            f"The image folder {root} does not exist. Set data.root to a directory laid out as "
            "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg, e.g. "
            "data.root=../shared/data/cifar10-jpg."
        )
    check_folder_root(root)
    part_dirs = {part: root / part for part in ("train", "test") if (root / part).is_dir()}
    listed = {part: _list_images(path) for part, path in (part_dirs or {"all": root}).items()}
    prefix = len(os.path.join(str(root), ""))  # the listed paths all start with ROOT/
    return Listing(
        root,
        {
            part: [(path[prefix:], size, mtime) for path, _, size, mtime in found]
            for part, found in _each_file_once(root, listed).items()
        },
    )


def decode_image_folder(
    listing: Listing, image_size: int, cache_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """The listed images as uint8 tensors, from the cache when it holds them (checked)."""
    cache = _cache_file(listing, image_size, cache_dir)
    expected = {part: len(entries) for part, entries in listing.files.items()}
    if cache is not None:
        parts = read_cache(cache, lambda cached: _holds(cached, expected, image_size))
        if parts is not None:
            return parts
    parts = {part: _decode_all(listing.paths(part), image_size) for part in listing.files}
    if cache is not None:
        write_cache(parts, cache)
    return parts


def _holds(cached, expected: dict[str, int], image_size: int) -> bool:
    """Whether a cached object is the parts of this listing: a dict of uint8 image tensors."""
    return (
        isinstance(cached, dict)
        and {part: getattr(t, "shape", None) for part, t in cached.items()}
        == {part: (n, 3, image_size, image_size) for part, n in expected.items()}
        and all(t.dtype == torch.uint8 for t in cached.values())
    )


def _decode_all(paths: list[str], image_size: int) -> torch.Tensor:
    """Decode in threads (Pillow releases the GIL while decoding); name every file that fails."""
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    bad: list[ImageReadError] = []

    def decode(index: int) -> None:
        try:
            out[index] = read_rgb_uint8(paths[index], image_size)
        except ImageReadError as error:
            bad.append(error)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(decode, range(len(paths))))
    if bad:
        if len(bad) == 1:
            raise bad[0]
        bad.sort(key=lambda error: error.path)
        listed = "; ".join(f"{error.path} ({error.reason[:80]})" for error in bad[:10]) + (
            f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        )
        raise AelabError(
            f"{len(bad)} image file(s) could not be decoded: {listed}. Each is truncated, corrupt "
            "or not an image despite its extension (delete or replace it), or larger than "
            "Pillow's decompression-bomb limit of 2 × PIL.Image.MAX_IMAGE_PIXELS pixels "
            "(downscale it); then run again."
        )
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cache_file(listing: Listing, image_size: int, cache_dir: str | Path | None) -> Path | None:
    """A file named by everything that changes the decoded tensors: paths, sizes, mtimes, size."""
    if cache_dir is None:
        return None
    key = listing.digest(CACHE_FORMAT, listing.root, image_size)[:16]
    return Path(cache_dir).expanduser() / f"folder-{listing.root.name}-{key}.pt"
