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
from PIL import Image
from torchvision.datasets import CIFAR10, ImageFolder

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


class _VisibleImageFolder(ImageFolder):
    """ImageFolder that ignores hidden directories (.ipynb_checkpoints must not become a class)."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        if not classes:
            raise AelabError(
                f"{directory} holds no class directories. An image folder needs the layout "
                "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (or ROOT/<class>/*.jpg "
                "with data.split=pooled); put the images in such folders."
            )
        return classes, {name: index for index, name in enumerate(classes)}


def list_folder_images(directory: Path) -> list[str]:
    """Image files of an ImageFolder-layout directory, in ImageFolder's (sorted) order.

    Plain strings, not Paths: CIFAR-10 has 60,000 files, and every run lists them to check its
    cache, so pathlib's per-object cost would be most of a second of each run's start.
    """
    try:
        folder = _VisibleImageFolder(
            str(directory),
            is_valid_file=lambda path: (
                path.lower().endswith(IMAGE_EXTENSIONS)
                and not os.path.basename(path).startswith(".")
            ),
        )
    except FileNotFoundError as error:  # torchvision's message for a class dir with no images
        raise AelabError(
            f"{directory}: {error} Every class directory needs at least one image "
            f"({', '.join(IMAGE_EXTENSIONS)}); remove the empty ones."
        ) from error
    return [path for path, _ in folder.samples]


def load_image_folder(
    root: str | Path, image_size: int, cache_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Decode ROOT/train and ROOT/test (or ROOT itself, as part "all") into uint8 tensors."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise AelabError(
            f"The image folder {root} does not exist. Set data.root to a directory laid out as "
            "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg, e.g. "
            "data.root=../shared/data/cifar10-jpg."
        )
    part_dirs = {part: root / part for part in ("train", "test") if (root / part).is_dir()}
    files = {part: list_folder_images(path) for part, path in (part_dirs or {"all": root}).items()}

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
    bad: list[str] = []

    def decode(index: int) -> None:
        try:
            with Image.open(paths[index]) as image:
                image = image.convert("RGB")
                if image.size != (image_size, image_size):
                    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
                out[index] = np.asarray(image)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            bad.append(f"{paths[index]} ({str(error).splitlines()[0][:80]})")

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        list(pool.map(decode, range(len(paths))))
    if bad:
        listed = "; ".join(sorted(bad)[:10]) + (
            f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        )
        raise AelabError(
            f"{len(bad)} image file(s) could not be decoded: {listed}. They are truncated, "
            "corrupt or not images despite their extension: delete or replace them and run again."
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
