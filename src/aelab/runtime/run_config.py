"""A finished run's config, read back outside Hydra (by eval.py, or in a notebook)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from aelab.errors import AelabError

RETIRED_PROFILER = "aelab.profiler.NoProfiler"


def load_run_config(run_dir: str | Path, output_dir: str | Path | None = None) -> DictConfig:
    """RUN_DIR/.hydra/config.yaml with paths.output_dir set to output_dir (default: run_dir).

    The saved config says `output_dir: ${hydra:runtime.output_dir}`, which resolves only inside a
    Hydra job; with a concrete path in its place every setting resolves. This is the way to read a
    run's config in a notebook:

        cfg = load_run_config("outputs/runs/<run>")
        task, datamodule = aelab.runtime.train.build(cfg)
    """
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise AelabError(
            f"{run_dir} is not a run dir: it has no .hydra/config.yaml. Give the dir of a run "
            "written by python train.py, e.g. outputs/runs/<date>_<time>.<µs>."
        )
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir if output_dir is not None else run_dir)
        # Older runs named a no-op profiler that aelab no longer ships; it recorded nothing.
        if OmegaConf.select(cfg, "trainer.profiler._target_") == RETIRED_PROFILER:
            del cfg.trainer["profiler"]
    return cfg
