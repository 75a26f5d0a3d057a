"""scripts/showcase.py refuses a bad --images or --out before it reads a checkpoint: the fast tier's
test of the showcase (tests/test_showcase.py trains its checkpoints, so it is slow)."""

import pytest

from aelab.analysis.showcase import main


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--images", "0"], "--images 0: give a positive number"),
        (["--out", "figure.jpg"], "give a PNG file's path"),
        (["--out", "."], "give a PNG file's path"),
    ],
)
def test_a_bad_argument_exits_2_naming_it_before_any_checkpoint_is_read(extra, named, capsys):
    missing = ["--reconstruction", "no/such.ckpt", "--colorization", "no/such.ckpt"]
    assert main([*missing, *extra]) == 2
    assert named in capsys.readouterr().err


def test_an_existing_figure_is_kept_without_overwrite(tmp_path, capsys):
    out = tmp_path / "showcase.png"
    out.write_bytes(b"an earlier figure")
    args = ["--reconstruction", "no/such.ckpt", "--colorization", "no/such.ckpt", "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier figure"
