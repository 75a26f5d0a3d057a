"""Reading aelab checkpoints safely (torch.load with weights_only=True): a checkpoint from
elsewhere is data, and a pickle that would run code is refused, not executed, as is a
hyperparameter that names code aelab does not (aelab.config.trusted)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from aelab.config.trusted import refuse_untrusted
from aelab.errors import AelabError
from aelab.models.network import build_network

CONFIG_PARTS = ("aelab", "hyper_parameters")
TASK_SCRIPTS = {"colorization": "scripts/colorize.py", "reconstruction": "scripts/reconstruct.py"}


def read_checkpoint(path: str | Path) -> dict:
    """An aelab checkpoint's contents, read as data: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise AelabError(
            f"The checkpoint {path} {what}. Runs keep theirs in <run dir>/checkpoints/ "
            "(best.ckpt and last.ckpt)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise AelabError(_refusal(path, error)) from None
    facts = checkpoint.get("aelab") if isinstance(checkpoint, dict) else None
    if not isinstance(facts, dict) or "model" not in facts:
        raise AelabError(f"{path} is not an aelab checkpoint (it has no 'aelab' entry).")
    for part in CONFIG_PARTS:  # what load_from_checkpoint and load_network build from
        refuse_untrusted(checkpoint.get(part), f"{path} ({part})")
    return checkpoint


def _refusal(path: Path, error: Exception) -> str:
    """Why the file was refused, without torch's advice to load it with weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch's message carries terminal colours
    python_object = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(error, pickle.UnpicklingError) and python_object:
        return (
            f"{path} could not be loaded as a checkpoint: it holds Python objects "
            f"({python_object.group(1)}), not only tensors and plain values, and unpickling them "
            "could run code, so aelab refuses to. Checkpoints written by aelab hold none: use one "
            "from a run dir's checkpoints/ (best.ckpt or last.ckpt)."
        )
    if isinstance(error, pickle.UnpicklingError):
        operand = re.search(r"Unsupported operand \d+", text)
        reason = operand.group(0) if operand else "data other than tensors and plain values"
    else:
        lines = text.strip().splitlines()
        first_line = lines[0].split(". ")[0].rstrip(".")[:200] if lines else "the file ends early"
        reason = f"{type(error).__name__}: {first_line}"
    if "weights_only" in reason:  # never pass on the advice to turn the safety off
        reason = type(error).__name__
    return (
        f"{path} could not be loaded as a checkpoint ({reason}): it is corrupt or not a "
        "checkpoint (aelab reads checkpoints as tensors and plain values only)."
    )


def load_network(path: str | Path, task: str) -> nn.Module:
    """The trained network of an aelab checkpoint of the given task, in eval mode."""
    return network_of(read_checkpoint(path), path, task)


def network_of(checkpoint: dict, path: str | Path, task: str) -> nn.Module:
    """The network of a checkpoint read_checkpoint(path) has read (its class and arguments, and
    its weights), in eval mode."""
    facts = checkpoint["aelab"]
    if facts.get("task") != task:
        trained = facts.get("task")
        raise AelabError(
            f"{path} holds a network trained for {trained}, not {task}: use it with task={trained} "
            f"(or {TASK_SCRIPTS.get(trained, 'the matching script')})."
        )
    try:
        network = build_network(facts["model"])
    except AelabError as error:
        raise AelabError(f"{path}: {error}") from None
    weights = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise AelabError(
            f"{path}: the weights do not fit the network it describes ({error})."
        ) from None
    return network.eval()
