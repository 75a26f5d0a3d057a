"""Where images come from: CIFAR-10 through torchvision, or any image folder.

Every source returns its parts ("train" and "test", or "all" for a folder without them) as uint8
tensors (N, 3, H, W), decoded once. A decoded folder is cached under cache_dir, never inside the
data root, which may be read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from aelab.data.image_io import ImageReadError, read_rgb_uint8
from aelab.errors import AelabError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CACHE_FORMAT = 1


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


def list_folder_images(directory: Path) -> list[str]:
    """Image files of an ImageFolder-layout directory, in ImageFolder's (sorted) order."""
    return [path for path, _ in _list_images(directory)]


def _list_images(directory: Path) -> list[tuple[str, str]]:
    """(listed path, real path) of every image file under directory's visible class dirs.

    The listing torchvision's ImageFolder makes (os.walk following links, sorted), except that a
    directory reached twice in one class (a symlink loop, a second link) is walked once. Plain
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
    files: list[tuple[str, str]] = []
    empty = []
    for name in classes:
        found = _walk_class(os.path.join(str(directory), name))
        if not found:
            empty.append(name)
        files += found
    if empty:
        raise AelabError(
            f"{directory}: no image files in the class directories {', '.join(empty)}. Every "
            f"class directory needs at least one image ({', '.join(IMAGE_EXTENSIONS)}); remove "
            "the empty ones."
        )
    return files


def _walk_class(top: str) -> list[tuple[str, str]]:
    """Image files under top, following links but entering each real directory once."""
    seen: set[str] = set()
    found: list[tuple[str, list[tuple[str, str]]]] = []
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
            elif name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                real = os.path.realpath(entry.path) if entry.is_symlink() else real_prefix + name
                images.append((entry.path, real))
        stack += reversed(subdirs)  # walked in name order, so which link is kept is stable
        found.append((current, images))
    found.sort(key=lambda walked: walked[0])  # os.walk's roots, sorted as ImageFolder sorts them
    return [pair for _, images in found for pair in images]


def _each_file_once(root: Path, listed: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    """Each real file once: in the first place listed within a part, and in one part only.

    A file listed in several parts goes to the part whose directory really holds it, or to the
    first part (train) when none does, e.g. a link in test/ to a file in train/ stays in train.
    """
    reals = [real for pairs in listed.values() for _, real in pairs]
    if len(set(reals)) == len(reals):
        return {part: [path for path, _ in pairs] for part, pairs in listed.items()}
    owners: dict[str, set[str]] = {}
    for part, pairs in listed.items():
        for _, real in pairs:
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

    files: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    for part, pairs in listed.items():
        kept: set[str] = set()
        files[part] = []
        for path, real in pairs:
            if real in kept or owner(real) != part:
                dropped[part] = dropped.get(part, 0) + 1
                continue
            kept.add(real)
            files[part].append(path)
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
    """Decode ROOT/train and ROOT/test (or ROOT itself, as part "all") into uint8 tensors.

    Each real file is decoded once, into one part only: symlinks cannot repeat an image or put
    a training image into the test split.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise AelabError(
            f"The image folder {root} does not exist. Set data.root to a directory laid out as "
            "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg, e.g. "
            "data.root=../shared/data/cifar10-jpg."
        )
    part_dirs = {part: root / part for part in ("train", "test") if (root / part).is_dir()}
    listed = {part: _list_images(path) for part, path in (part_dirs or {"all": root}).items()}
    files = _each_file_once(root, listed)

    cache_file = _cache_file(root, image_size, files, cache_dir)
    if cache_file is not None and cache_file.exists():
        return torch.load(cache_file, weights_only=True)
    parts = {part: _decode_all(paths, image_size) for part, paths in files.items()}
    if cache_file is not None:
        _save_atomically(parts, cache_file)
    return parts


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


def _cache_file(
    root: Path, image_size: int, files: dict[str, list[str]], cache_dir: str | Path | None
) -> Path | None:
    """A file named by everything that changes the decoded tensors: paths, sizes, mtimes, size."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{root}|{image_size}".encode())
    prefix = len(os.path.join(str(root), ""))  # the listed paths all start with ROOT/
    for part, paths in files.items():
        for path in paths:
            stat = os.stat(path)
            digest.update(f"|{part}|{path[prefix:]}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(cache_dir).expanduser() / f"folder-{root.name}-{digest.hexdigest()[:16]}.pt"


def _save_atomically(parts: dict[str, torch.Tensor], path: Path) -> None:
    """Write to a temporary file beside the target, then rename: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(parts, temporary)
        temporary.replace(path)
    except OSError as error:  # a read-only or full cache dir costs speed next time, not this run
        log.warning(
            "Could not cache the decoded images at %s (%s); set paths.cache_dir.", path, error
        )
