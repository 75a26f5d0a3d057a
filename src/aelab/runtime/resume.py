"""`python train.py resume=RUN_DIR`: continue a run in its own dir, with the config it started with.

aelab.runtime.cli calls resume_arguments before Hydra parses the command line and swaps `resume=RUN_DIR`
for arguments that make Hydra load RUN_DIR/.hydra/config.yaml itself (not a config composed anew
from today's config files), write into RUN_DIR, and leave RUN_DIR/.hydra untouched
(hydra.output_subdir=null). The run then finds `resume` set and continues from last.ckpt.
"""

from __future__ import annotations

import json
from pathlib import Path

from aelab.errors import AelabError

PREFIX = "resume="


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line for Hydra: argv unchanged, or, for resume=RUN_DIR, that run's."""
    if not any(argument.startswith(PREFIX) for argument in argv):
        return argv
    if len(argv) != 1:
        raise AelabError(
            "resume=RUN_DIR takes no other arguments: a resumed run keeps the config it started "
            "with (RUN_DIR/.hydra/config.yaml), so that it ends exactly where the uninterrupted "
            "run would. To train with other settings, start a new run."
        )
    run_dir = resumable_run_dir(argv[0].removeprefix(PREFIX))
    return [
        f"--config-path={run_dir / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir='{run_dir}'",
        "hydra.output_subdir=null",
        "hydra.job.name=train",
        f"++resume='{run_dir}'",
    ]


def resumable_run_dir(path: str) -> Path:
    """RUN_DIR resolved, once it is known to hold a config and a last.ckpt to continue from."""
    run_dir = Path(path).expanduser().resolve()
    if "'" in str(run_dir):
        raise AelabError(f"resume=: the path {run_dir} contains a quote; rename the directory.")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise AelabError(
            f"resume={path}: {run_dir} is not a run dir (it has no .hydra/config.yaml). Give the "
            "dir of the run to continue, e.g. resume=outputs/runs/<date>_<time>.<µs>."
        )
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise AelabError(
            f"resume={path}: {run_dir} has no checkpoints/last.ckpt: the run stopped before its "
            "first checkpoint, so there is nothing to continue. Start it again with the overrides "
            "in its .hydra/overrides.yaml."
        )
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("status") == "completed":
        raise AelabError(f"resume={path}: {run_dir} has completed; there is nothing to continue.")
    refuse_manual_optimization_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def refuse_manual_optimization_checkpoint(last: Path) -> None:
    """Checked before Hydra starts, so a refused resume leaves the run's status as it was."""
    from aelab.models.checkpoint import read_checkpoint  # torch loads only for a resume

    if "gradient_clip_val" in read_checkpoint(last).get("hyper_parameters", {}):
        raise AelabError(
            f"{last} was saved by an aelab version whose task stepped the optimizer itself "
            "(manual optimization); Lightning keeps that run's step count where automatic "
            "optimization does not read it, so a resume would restart its step count, step "
            "checkpoints and schedulers at 0. Start a new run from its weights instead: python "
            f"train.py ckpt_path={last} (with the run's model overrides), or evaluate it with "
            f"python eval.py ckpt_path={last}."
        )
