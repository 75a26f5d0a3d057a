"""Train/val/test splits of a source's parts, seeded on their own so the test set stays fixed."""

from __future__ import annotations

import torch

from aelab.errors import AelabError

SPLIT_MODES = ("pooled", "official")


def split_parts(
    parts: dict[str, torch.Tensor],
    mode: str = "pooled",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
) -> dict[str, torch.Tensor]:
    """Return {"train", "val", "test"} uint8 tensors: the images split_indices picks."""
    sizes = {part: len(images) for part, images in parts.items()}
    indices = split_indices(sizes, mode, val_fraction, test_fraction, seed, subset)
    return take_splits(parts, indices)


def take_splits(
    parts: dict[str, torch.Tensor], indices: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The images at each split's indices into the parts laid end to end."""
    pool = torch.cat(list(parts.values())) if len(parts) > 1 else next(iter(parts.values()))
    return {name: pool[index] for name, index in indices.items()}


def split_indices(
    sizes: dict[str, int],
    mode: str = "pooled",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    subset: int | None = None,
) -> dict[str, torch.Tensor]:
    """{"train", "val", "test"}: indices into the parts (of these sizes) laid end to end.

    pooled: every image of every part in one pool, shuffled with `seed`, cut by the fractions
    (the assignment's 80/10/10 of all 60,000). official: the test part is the test split; val is
    `val_fraction` of the train part (test_fraction is not used). `subset` keeps that many images
    (a seeded sample, drawn before cutting, in proportion across the parts) for quick runs.
    The indices depend on the sizes and settings only, so a run's split is known before decoding.
    """
    check_split_settings(mode, val_fraction, test_fraction, subset)
    generator = torch.Generator().manual_seed(seed)
    if mode == "pooled":
        pool = _sample(sum(sizes.values()), subset, generator)
        n_val, n_test = round(len(pool) * val_fraction), round(len(pool) * test_fraction)
        splits = {
            "val": pool[:n_val],
            "test": pool[n_val : n_val + n_test],
            "train": pool[n_val + n_test :],
        }
    else:
        if list(sizes) != ["train", "test"]:
            raise AelabError(
                "data.split=official needs a source with its own train and test parts "
                "(ROOT/train and ROOT/test for an image folder); this one has only "
                f"{sorted(sizes)}. Use data.split=pooled."
            )
        total = sizes["train"] + sizes["test"]
        keep = None if subset is None else {p: round(subset * n / total) for p, n in sizes.items()}
        train_part = _sample(sizes["train"], keep and keep["train"], generator)
        n_val = round(len(train_part) * val_fraction)
        splits = {
            "train": train_part[n_val:],
            "val": train_part[:n_val],
            "test": sizes["train"] + _sample(sizes["test"], keep and keep["test"], generator),
        }
    empty = [name for name, index in splits.items() if len(index) == 0]
    if empty:
        counts = ", ".join(f"{name}={len(index)}" for name, index in splits.items())
        raise AelabError(
            f"The {mode} split leaves {', '.join(empty)} empty ({counts}). Raise data.subset or the "
            "fractions (data.val_fraction, data.test_fraction) so every split gets images."
        )
    return splits


def _sample(size: int, count: int | None, generator: torch.Generator) -> torch.Tensor:
    """A seeded shuffle of range(size), cut to `count` when given."""
    order = torch.randperm(size, generator=generator)
    return order if count is None else order[:count]


def check_split_settings(
    mode: str, val_fraction: float, test_fraction: float, subset: int | None
) -> None:
    """Refuse split settings that cannot give three non-empty splits, before anything loads."""
    if mode not in SPLIT_MODES:
        raise AelabError(f"data.split must be one of {list(SPLIT_MODES)}, got {mode!r}.")
    used = (val_fraction, test_fraction) if mode == "pooled" else (val_fraction,)
    if any(not 0 < f < 1 for f in used) or sum(used) >= 1:
        raise AelabError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be "
            "between 0 and 1 and leave a share for training (train = 1 − val − test; with "
            "data.split=official only val_fraction is used). The default is 0.1 and 0.1."
        )
    if subset is not None and subset < 3:
        raise AelabError(f"data.subset must be at least 3 images (or null for all), got {subset}.")
