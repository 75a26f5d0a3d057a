"""scripts/colorize.py and scripts/reconstruct.py refuse bad inputs and outputs before they read a
checkpoint: the fast tier's test of their command line (tests/test_predict.py trains checkpoints)."""

import pytest

from aelab.analysis.predict_cli import main
from tests.conftest import write_images


@pytest.mark.parametrize("task", ["colorization", "reconstruction"])
def test_a_missing_input_or_an_output_onto_an_input_exits_2_naming_it(task, tmp_path, capsys):
    write_images(tmp_path, 1)
    image = tmp_path / "0000.png"
    missing = ["--ckpt", "no/such.ckpt"]
    assert (
        main(task, [*missing, str(tmp_path / "gone.png"), "--out-dir", str(tmp_path / "out")]) == 2
    )
    assert "do not exist: " in capsys.readouterr().err
    assert main(task, [*missing, str(image), "--out-dir", str(tmp_path), "--overwrite"]) == 2
    assert "would replace an input image" in capsys.readouterr().err
    assert image.is_file() and not (tmp_path / "out").exists()


def test_a_negative_temperature_is_refused(tmp_path, capsys):
    args = ["--ckpt", "no/such.ckpt", "x.png", "--out-dir", str(tmp_path), "--temperature", "-1"]
    assert main("colorization", args) == 2
    assert "--temperature must be ≥ 0" in capsys.readouterr().err
