"""Whether data.root is an image folder's own root, not a level above or below it.

A root one level off still lists images, so it would train silently on the wrong layout: a root
above a split layout makes the whole dataset one class and pools its test images into training;
a root at its train/ drops the test split. The rule, checked from a few directory listings (no
image is opened) before anything is decoded or cached:

- too high: one of the root's class directories is a split layout itself (train/ and test/, each
  holding directories) or leads to one through directories that hold nothing but one directory
  (data.root=../shared for ../shared/data/cifar10-jpg); or the root's only class directory is a
  pooled layout (no image of its own, only directories of them, none named train or test), and
  the deepest such down its chain of only children is the folder suggested;
- too low: the root is the train/ or test/ of a split layout, or it holds images but no
  class directories (one class directory of an image folder).

Torch-free, so a check can run before torch loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from aelab.errors import AelabError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "test")
LAYOUT = (
    "An image folder is laid out as ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg "
    "(or ROOT/<class>/*.jpg with data.split=pooled)"
)


def is_image_name(name: str) -> bool:
    """Whether a file name is one the folder source reads: an image extension, not hidden."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def check_folder_root(root: Path) -> None:
    """Refuse a root above or below an image folder's root, naming the one that works."""
    root = Path(root)
    if any((root / split).is_dir() for split in SPLITS):
        return  # a split layout's root, whatever its name
    if _is_split_dir(root):
        raise AelabError(
            f"data.root={root} is the {root.name}/ of a split layout: the run would never see "
            f"{root.parent / _other_split(root.name)}. {LAYOUT}; point data.root at the folder "
            f"that holds both: data.root={root.parent}."
        )
    subdirs, images = _entries(root)
    if not subdirs and images:
        raise AelabError(
            f"data.root={root} holds images but no class directories: it looks like one class "
            f"directory of an image folder. {LAYOUT}; point data.root at the image folder's "
            f"root, probably data.root={_root_above(root)}, or move the images into a "
            f"directory inside {root}."
        )
    nested = _roots_below(root)
    if nested:
        names = ", ".join(f"{d.relative_to(root)}/" for d in nested)
        pooled = (
            ", its test images pooled with the training ones"
            if any(map(_is_split_layout, nested))
            else ""
        )
        roots = " or ".join(f"data.root={d}" for d in nested)
        raise AelabError(
            f"data.root={root} is above an image folder: it holds {names}, which it would read "
            f"as a single class{pooled}. {LAYOUT}; point data.root at the image folder: {roots}."
        )


def _roots_below(root: Path) -> list[Path]:
    """The image folders a root that is too high holds (see the module's rule); [] for a root
    that is not too high."""
    subdirs = _entries(root)[0]
    nested = [split for d in subdirs if (split := _split_layout_within(d, root))]
    if nested or len(subdirs) != 1 or not _is_pooled_layout(subdirs[0]):
        return nested
    (only,) = subdirs
    seen = {os.path.realpath(root), os.path.realpath(only)}
    while True:  # down to the deepest pooled layout of the chain (a link loop ends it)
        inner = _entries(only)[0]
        if len(inner) != 1 or not _is_pooled_layout(inner[0]):
            return [only]
        if os.path.realpath(inner[0]) in seen:
            return []
        only = inner[0]
        seen.add(os.path.realpath(only))


def _split_layout_within(directory: Path, root: Path) -> Path | None:
    """directory, or the first directory down its chain of only children (directories that hold
    nothing but one directory), that is a split layout; None if there is none."""
    seen = {os.path.realpath(root)}
    while os.path.realpath(directory) not in seen:
        if _is_split_layout(directory):
            return directory
        seen.add(os.path.realpath(directory))
        subdirs, images = _entries(directory)
        if images or len(subdirs) != 1:
            return None
        directory = subdirs[0]
    return None


def _entries(directory: Path) -> tuple[list[Path], list[str]]:
    """directory's visible subdirectories (sorted) and the image names it holds itself."""
    subdirs, images = [], []
    try:
        scanned = list(os.scandir(directory))
    except OSError:
        return [], []  # the listing that follows names the error
    for entry in scanned:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir and not entry.name.startswith("."):
            subdirs.append(Path(entry.path))
        elif not is_dir and is_image_name(entry.name):
            images.append(entry.name)
    return sorted(subdirs), images


def _is_split_layout(directory: Path) -> bool:
    """Whether directory holds train/ and test/, each with directories (class dirs) in it."""
    return all(_entries(directory / split)[0] for split in SPLITS)


def _is_pooled_layout(directory: Path) -> bool:
    """Whether directory holds no image itself, only class directories (none named a split)."""
    subdirs, images = _entries(directory)
    return bool(subdirs) and not images and not any(d.name in SPLITS for d in subdirs)


def _is_split_dir(directory: Path) -> bool:
    """Whether directory is the train/ or test/ of a split layout (its sibling split exists)."""
    return directory.name in SPLITS and _is_split_layout(directory.parent)


def _other_split(name: str) -> str:
    return SPLITS[1 - SPLITS.index(name)]


def _root_above(class_dir: Path) -> Path:
    """The image folder root a class directory belongs to: its parent, or above a split dir."""
    parent = class_dir.parent
    return parent.parent if _is_split_dir(parent) else parent
