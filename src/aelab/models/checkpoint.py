"""Reading aelab checkpoints safely (torch.load with weights_only=True): a checkpoint from
elsewhere is data, and a pickle that would run code is refused, not executed."""

from __future__ import annotations

from pathlib import Path

import torch

from aelab.errors import AelabError
from aelab.models.autoencoder import ConvAutoEncoder

TASK_SCRIPTS = {"colorization": "scripts/colorize.py", "reconstruction": "scripts/reconstruct.py"}


def read_checkpoint(path: str | Path) -> dict:
    """An aelab checkpoint's contents, read as data: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise AelabError(
            f"The checkpoint {path} does not exist. Runs keep theirs in <run dir>/checkpoints/ "
            "(best.ckpt and last.ckpt)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise AelabError(
            f"{path} could not be loaded as a checkpoint with weights_only=True ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). It is corrupt, not a checkpoint, or holds objects "
            "other than tensors and plain values, which aelab refuses to unpickle for safety."
        ) from None
    facts = checkpoint.get("aelab") if isinstance(checkpoint, dict) else None
    if not isinstance(facts, dict) or "model" not in facts:
        raise AelabError(f"{path} is not an aelab checkpoint (it has no 'aelab' entry).")
    return checkpoint


def load_network(path: str | Path, task: str) -> ConvAutoEncoder:
    """The trained ConvAutoEncoder of an aelab checkpoint of the given task, in eval mode."""
    checkpoint = read_checkpoint(path)
    facts = checkpoint["aelab"]
    if facts.get("task") != task:
        trained = facts.get("task")
        raise AelabError(
            f"{path} holds a network trained for {trained}, not {task}: use it with task={trained} "
            f"(or {TASK_SCRIPTS.get(trained, 'the matching script')})."
        )
    network = ConvAutoEncoder(**facts["model"])
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
