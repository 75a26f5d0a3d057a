"""The TensorBoard logger, which names each run by what sets it apart: its overrides."""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger

from aelab.config.arguments import as_typed

DEFAULT_NAME = "defaults"  # a run without overrides (or outside a Hydra job)
MAX_NAME_BYTES = 200  # a file name may have 255


class NamedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, writing to SAVE_DIR/tensorboard/<run name>.

    TensorBoard names a run by its event dir, so `tensorboard --logdir outputs` lists
    `multirun/<sweep>/3/tensorboard/loss=mse,pooling=none` where the run dir alone says `3`.
    `version` (Lightning's event subdir) is the run's name unless given.
    """

    def __init__(
        self, save_dir: str, name: str = "tensorboard", version: str | None = None, **kwargs
    ) -> None:
        if version is None:
            version = (
                run_name(Path(HydraConfig.get().runtime.output_dir))
                if HydraConfig.initialized()
                else DEFAULT_NAME
            )
        super().__init__(save_dir, name, version, **kwargs)


def run_name(run_dir: Path) -> str:
    """The run's command-line overrides as Hydra joined them when the run started
    (hydra.job.override_dirname, without the keys configs/hydra/default.yaml excludes), read from
    RUN/.hydra/hydra.yaml: a resumed run or a DDP rank, whose own command line differs, gets the
    same name and writes on into the same event dir. "defaults" for a run without overrides; a
    '/' in a value would nest dirs, so it becomes '_'."""
    saved = run_dir / ".hydra" / "hydra.yaml"
    try:
        name = yaml.safe_load(saved.read_text())["hydra"]["job"]["override_dirname"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return DEFAULT_NAME  # hydra.output_subdir=null, or a file that is not Hydra's
    if not isinstance(name, str) or not name:
        return DEFAULT_NAME
    name = as_typed(name).replace("/", "_").encode()
    if len(name) > MAX_NAME_BYTES:  # a label only: each run has its own event dir anyway
        name = name[: MAX_NAME_BYTES - 3] + "…".encode()
    return name.decode(errors="ignore")
