"""`python train.py resume=RUN_DIR`: continue a run in its own dir, with the config it started with.

aelab.runtime.cli calls resume_arguments before Hydra parses the command line and swaps `resume=RUN_DIR`
for arguments that make Hydra load RUN_DIR/.hydra/config.yaml itself (not a config composed anew
from today's config files), write into RUN_DIR, and leave RUN_DIR/.hydra untouched
(hydra.output_subdir=null). The run then finds `resume` set and continues from last.ckpt.
Before that, RUN_DIR is claimed (aelab.runtime.run_lock), so a run whose process still lives is
refused. A run stopped before its first checkpoint (interrupted in its setup, or killed before
it wrote metrics.json) starts again from the beginning in its dir. `resume=SWEEP_DIR` continues
a sweep instead (aelab.runtime.sweeps): its unfinished jobs, then those not run yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aelab.config.trusted import trusting
from aelab.errors import AelabError
from aelab.runtime.distributed import launch_rank
from aelab.runtime.run_config import is_eval_dir, load_run_config
from aelab.runtime.run_lock import claim
from aelab.runtime.sweeps import continue_sweep, is_sweep_dir

PREFIX = "resume="
TRUST_KEY = "trusted_modules="  # the one setting a resume takes: trust is the user's, not the run's


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line for Hydra: argv unchanged, or, for resume=RUN_DIR, that run's, with the
    modules this command line trusts in place of those its saved config lists."""
    if not any(argument.startswith(PREFIX) for argument in argv):
        return argv
    trust = [a for a in argv if a.lstrip("+").startswith(TRUST_KEY)]
    if len(argv) - len(trust) != 1 or len(trust) > 1:
        raise AelabError(
            "resume=RUN_DIR takes no other arguments (but trusted_modules=[MODULE], the modules "
            "of your own networks it may build): a resumed run keeps the config it started "
            "with (RUN_DIR/.hydra/config.yaml), so that it ends exactly where the uninterrupted "
            "run would. To train with other settings, start a new run."
        )
    path = next(a for a in argv if a.startswith(PREFIX)).removeprefix(PREFIX)
    trusted = trusted_modules_argument(trust[0]) if trust else []
    trust_argument = f"++trusted_modules=[{','.join(trusted)}]"
    if is_sweep_dir(Path(path).expanduser()):
        sweep_dir = Path(path).expanduser().resolve()
        claim(sweep_dir, "resume")  # a sweep whose process still lives is refused
        sys.exit(continue_sweep(sweep_dir, sys.argv[0], trust_argument))
    with trusting(trusted):
        run_dir = resumable_run_dir(path)
    return [
        f"--config-path={run_dir / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir='{run_dir}'",
        "hydra.output_subdir=null",
        "hydra.job.name=train",
        trust_argument,
        f"++resume='{run_dir}'",
    ]


def trusted_modules_argument(argument: str) -> list[str]:
    """The module names of `trusted_modules=[a,b]` (or `=a`), read as Hydra reads the value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(argument.lstrip("+")).value()
    except Exception as error:  # Hydra's OverrideParseException, with its own words
        raise AelabError(
            f"{argument} cannot be read ({error}); write trusted_modules=[my_pkg]."
        ) from None
    modules = value if isinstance(value, list) else [value]
    with trusting(modules):  # names checked: a module name each
        return [str(module) for module in modules]


def resumable_run_dir(path: str) -> Path:
    """RUN_DIR resolved, once it is known to hold a config and a checkpoint to continue from, and
    claimed for this process (aelab.runtime.run_lock): a run whose process lives is refused."""
    run_dir = Path(path).expanduser().resolve()
    if "'" in str(run_dir):
        raise AelabError(f"resume=: the path {run_dir} contains a quote; rename the directory.")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise AelabError(
            f"resume={path}: {run_dir} is not a run dir (it has no .hydra/config.yaml). Give the "
            "dir of the run to continue, e.g. resume=outputs/runs/<date>_<time>.<µs>."
        )
    if is_eval_dir(run_dir):
        raise AelabError(
            f"resume={path}: {run_dir} is an eval dir (eval.py wrote it), not a training run: it "
            "holds no checkpoint to continue, and a resume would write over its files. Give the "
            "dir of the run it scored (its eval.json names it as run_dir)."
        )
    load_run_config(run_dir)  # Hydra will load it: refused here if it names code aelab does not
    last = run_dir / "checkpoints" / "last.ckpt"
    status = run_status(run_dir)
    if status == "completed":
        raise AelabError(f"resume={path}: {run_dir} has completed; there is nothing to continue.")
    if not last.is_file() and status not in (None, "interrupted"):
        raise AelabError(
            f"resume={path}: {run_dir} has no checkpoints/last.ckpt: the run stopped ({status}) "
            "before its first checkpoint, so there is nothing to continue. Start it again with "
            "the overrides in its .hydra/overrides.yaml."
        )
    if launch_rank() > 0:
        return run_dir  # rank zero has claimed the run and checked its checkpoint
    claim(run_dir, "resume")  # before torch loads: a live run is refused at once
    if last.is_file():
        from aelab.runtime.checkpoint_io import remove_temporaries

        remove_temporaries(last.parent)  # the lock is ours: no save of another is running
        refuse_manual_optimization_checkpoint(last, usable_last_checkpoint(run_dir))
    return run_dir


def run_status(run_dir: Path) -> str | None:
    """The status metrics.json records, or None where there is none to read."""
    try:
        status = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return status.get("status") if isinstance(status, dict) else None


def usable_last_checkpoint(run_dir: Path, required: bool = True) -> dict | None:
    """The contents of RUN_DIR/checkpoints/last.ckpt (written atomically, so whole unless damaged
    after the fact); None if it does not exist and is not `required`. One that cannot be read is
    named, and the run's status is left as it was."""
    from aelab.models.checkpoint import read_checkpoint  # torch loads only for a resume

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() and not required:
        return None
    try:
        return read_checkpoint(last)
    except Exception as error:  # read_checkpoint can fail on an error that has no text
        problem = str(error) if isinstance(error, AelabError) else f"{last} could not be read."
    raise AelabError(
        f"{problem} The run cannot continue where it stopped; its status is left as it was. "
        "Start a new run from its weights instead: python train.py init_weights="
        f"{last.with_name('best.ckpt')} (with the run's overrides from .hydra/overrides.yaml)."
    )


def refuse_manual_optimization_checkpoint(last: Path, checkpoint: dict) -> None:
    """Checked before Hydra starts, so a refused resume leaves the run's status as it was."""
    if "gradient_clip_val" in checkpoint.get("hyper_parameters", {}):
        raise AelabError(
            f"{last} was saved by an aelab version whose task stepped the optimizer itself "
            "(manual optimization); Lightning keeps that run's step count where automatic "
            "optimization does not read it, so a resume would restart its step count, step "
            "checkpoints and schedulers at 0. Start a new run from its weights instead: python "
            f"train.py init_weights={last} (with the run's model overrides), or evaluate it with "
            f"python eval.py ckpt_path={last}."
        )
