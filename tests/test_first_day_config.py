"""Trainer flags as Lightning users write them, and every node's arguments checked before torch."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import yaml
from hydra.utils import get_class

from aelab import CONFIG_DIR
from aelab.config import check_config
from aelab.config.arguments import TRAINER, trainer_arguments_as_written
from aelab.config.signatures import arguments_of
from aelab.errors import AelabError
from tests.conftest import CLEAN_ENVIRONMENT, REPO, compose_config, run_cli
from tests.test_config_validation import aelab_paragraph


def shipped_targets() -> set[str]:
    """Every `_target_` the config files name, and the Trainer."""
    found = {TRAINER}
    for path in CONFIG_DIR.rglob("*.yaml"):
        if path.is_relative_to(CONFIG_DIR / "hydra"):
            continue  # Hydra's callbacks and launchers: Hydra builds them, not a run
        stack = [yaml.safe_load(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("_target_"), str) and node["_target_"] != "???":
                    found.add(node["_target_"])  # ???: model=custom's, the user names it
                stack += list(node.values())
    return found


@pytest.mark.parametrize("target", sorted(shipped_targets()))
def test_arguments_read_from_source_are_the_installed_signature(target):
    parameters = inspect.signature(get_class(target)).parameters.values()
    keywords = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    found = arguments_of(target)
    assert found is not None, target
    assert found.names == tuple(p.name for p in parameters if p.kind not in keywords)
    assert found.open == any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def test_every_trainer_argument_is_written_without_plus():
    names = [p for p in inspect.signature(get_class(TRAINER)).parameters]
    written = trainer_arguments_as_written([f"trainer.{name}=1" for name in names])
    assert written == [f"++trainer.{name}=1" for name in names]
    untouched = ["+trainer.devices=2", "~trainer.devices", "trainer=cpu", "loss=mse"]
    assert trainer_arguments_as_written(untouched) == untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+trainer.max_epoch=1"], "trainer.max_epoch: lightning.pytorch.Trainer takes no "),
        (["+optimizer.lrr=1e-3"], "(did you mean optimizer.lr?; ~optimizer.lrr drops it)"),
        (["+callbacks.preview.cout=4"], "did you mean callbacks.preview.count?"),
        (["+model.kernel=5"], "did you mean model.kernel_size?"),
        (["scheduler=step", "+scheduler.scheduler.step=2"], "did you mean scheduler.scheduler"),
    ],
)
def test_a_key_no_constructor_takes_is_refused_with_a_suggestion(overrides, message, tmp_path):
    with pytest.raises(AelabError) as refused:
        check_config(compose_config(overrides, tmp_path))
    assert message in str(refused.value)


@pytest.mark.slow
def test_a_trainer_flag_without_plus_reaches_the_trainer(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        *smoke_overrides, "trainer.limit_val_batches=1", "trainer.detect_anomaly=false",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["limit_val_batches"] == 1
    assert saved["trainer"]["detect_anomaly"] is False
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["+trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
        (["trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
        (["+optimizer.lrr=1e-3"], "did you mean optimizer.lr?"),
        (["data=folder", "~local"], "data=folder needs data.root=PATH"),
        (["data=folder", "data.root=no/such/dir"], "does not exist"),
    ],
)
def test_a_refusal_comes_before_torch_and_before_a_run_dir(overrides, said, tmp_path):
    script = (
        "import sys\n"
        "from aelab.runtime.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules)\n"
    )
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", script, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert said in aelab_paragraph(result.stderr)
    assert not run_dir.exists()
