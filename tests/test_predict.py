import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.analysis.predict import load_network, main
from aelab.data.color import rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.runtime.train import train
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def checkpoints(image_folder, tmp_path_factory) -> dict:
    """A smoke-trained checkpoint of each task."""
    paths = {}
    for task in ("colorization", "reconstruction"):
        run_dir = tmp_path_factory.mktemp(task)
        overrides = ["debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
                     f"paths.cache_dir={run_dir / 'cache'}", f"task={task}", "logger=none"]  # fmt: skip
        train(compose_config(overrides, run_dir), run_dir)
        paths[task] = run_dir / "checkpoints" / "best.ckpt"
    return paths


@pytest.fixture
def odd_images(tmp_path):
    rng = np.random.default_rng(0)
    colour = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(colour)
    grey = tmp_path / "scan.png"
    Image.fromarray(rng.integers(0, 256, (21, 19), dtype=np.uint8), mode="L").save(grey)
    return [colour, grey]


def lightness(path) -> torch.Tensor:
    with Image.open(path) as image:
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
    return rgb_to_lab_normalized(rgb.permute(2, 0, 1)[None])[:, 0] * 100


def test_colorize_keeps_size_and_lightness_of_any_image(checkpoints, odd_images, tmp_path):
    out = tmp_path / "out"
    assert main("colorization", [*map(str, odd_images), "--ckpt", str(checkpoints["colorization"]),
                                 "--out-dir", str(out)]) == 0  # fmt: skip
    for source in odd_images:
        written = out / f"{source.stem}.png"
        with Image.open(written) as image, Image.open(source) as original:
            assert image.size == original.size and image.mode == "RGB"
        difference = (lightness(written) - lightness(source)).abs()
        assert difference.max() < 1.5 and difference.mean() < 0.4  # L units (0-100): 8-bit rounding


def test_reconstruct_writes_same_size_rgb(checkpoints, odd_images, tmp_path):
    assert main("reconstruction", [str(odd_images[0]), "--ckpt", str(checkpoints["reconstruction"]),
                                   "--out-dir", str(tmp_path / "r")]) == 0  # fmt: skip
    with Image.open(tmp_path / "r" / "photo.png") as image:
        assert image.size == (50, 37)


def test_a_checkpoint_of_the_other_task_is_refused(checkpoints, odd_images, tmp_path, capsys):
    code = main("colorization", [str(odd_images[0]), "--ckpt", str(checkpoints["reconstruction"]),
                                 "--out-dir", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "trained for reconstruction" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_and_unreadable_inputs_are_named(checkpoints, tmp_path, capsys):
    ckpt = str(checkpoints["colorization"])
    assert (
        main(
            "colorization", [str(tmp_path / "nope.jpg"), "--ckpt", ckpt, "--out-dir", str(tmp_path)]
        )
        == 2
    )
    assert "nope.jpg" in capsys.readouterr().err
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is not a jpeg")
    assert main("colorization", [str(fake), "--ckpt", ckpt, "--out-dir", str(tmp_path / "o")]) == 2
    assert "fake.jpg could not be read" in capsys.readouterr().err


class _RunsCode:
    def __reduce__(self):
        return (open, ("/tmp/aelab-pwned-marker", "w"))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = "/tmp/aelab-pwned-marker"
    import os

    if os.path.exists(marker):
        os.remove(marker)
    crafted = tmp_path / "evil.ckpt"
    with open(crafted, "wb") as handle:
        pickle.dump({"aelab": {"task": "colorization"}, "payload": _RunsCode()}, handle)
    with pytest.raises(AelabError, match="weights_only"):
        load_network(crafted, "colorization")
    assert not os.path.exists(marker)
    with pytest.raises(AelabError, match="does not exist"):
        load_network(tmp_path / "missing.ckpt", "colorization")
