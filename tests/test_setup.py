"""Setting up: make's venv (SYSTEM_TORCH=1 reuses an installed torch) and the machine-local config."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed; CI has it")
@pytest.mark.parametrize(("setting", "flag_expected"), [([], False), (["SYSTEM_TORCH=1"], True)])
def test_the_venv_sees_system_packages_only_when_asked(setting, flag_expected, tmp_path):
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "-n", *setting, f"VENV={venv}", f"{venv}/.installed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    creates = next(line for line in plan if "-m venv" in line)
    assert ("--system-site-packages" in creates) is flag_expected
    assert any(f"{venv}/bin/python -m pip install" in line and "-e" in line for line in plan)


def test_a_machine_local_config_sets_the_data_once_and_the_command_line_still_wins(tmp_path):
    from hydra import compose, initialize_config_dir

    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    example = configs / "local" / "default.yaml.example"
    (configs / "local" / "default.yaml").write_text(example.read_text())

    def data(*overrides: str):
        with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        return cfg.data.source, cfg.data.root

    assert data() == ("folder", "../shared/data/cifar10-jpg")
    assert data("data=cifar10") == ("cifar10", "data")
    assert data("data.root=/elsewhere") == ("folder", "/elsewhere")
