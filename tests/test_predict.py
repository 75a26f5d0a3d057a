import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.analysis.predict import load_network
from aelab.analysis.predict_cli import main
from aelab.data.color import rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.runtime.train import train
from tests.conftest import REPO, compose_config


@pytest.fixture(scope="module")
def checkpoints(image_folder, tmp_path_factory) -> dict:
    """A smoke-trained checkpoint of each task."""
    paths = {}
    for name in ("colorization", "reconstruction", "colorization-ce"):
        run_dir = tmp_path_factory.mktemp(name)
        task, _, loss = name.partition("-")
        overrides = ["debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
                     f"paths.cache_dir={run_dir / 'cache'}", f"task={task}", "logger=none",
                     *([f"loss={loss}"] if loss else [])]  # fmt: skip
        train(compose_config(overrides, run_dir), run_dir)
        paths[name] = run_dir / "checkpoints" / "best.ckpt"
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_colorize_with_a_ce_checkpoint_keeps_size_and_lightness_and_decodes_at_a_temperature(
    checkpoints, odd_images, tmp_path, capsys
):
    ckpt = str(checkpoints["colorization-ce"])
    written = {}
    for temperature in ("0", "1"):
        out = tmp_path / f"t{temperature}"
        argv = [*map(str, odd_images), "--ckpt", ckpt, "--out-dir", str(out)]
        assert main("colorization", [*argv, "--temperature", temperature]) == 0
        for source in odd_images:
            with Image.open(out / f"{source.stem}.png") as image, Image.open(source) as original:
                assert image.size == original.size and image.mode == "RGB"
            difference = (lightness(out / f"{source.stem}.png") - lightness(source)).abs()
            assert difference.max() < 1.5 and difference.mean() < 0.4
        with Image.open(out / "photo.png") as image:
            written[temperature] = np.asarray(image, dtype=np.int16)
    assert np.abs(written["0"] - written["1"]).max() > 0  # the mode is not the mean
    argv = [str(odd_images[0]), "--ckpt", ckpt, "--out-dir", str(tmp_path / "bad")]
    assert main("colorization", [*argv, "--temperature", "-1"]) == 2
    assert "--temperature must be ≥ 0" in capsys.readouterr().err


@pytest.mark.slow
def test_reconstruct_writes_same_size_rgb(checkpoints, odd_images, tmp_path):
    assert main("reconstruction", [str(odd_images[0]), "--ckpt", str(checkpoints["reconstruction"]),
                                   "--out-dir", str(tmp_path / "r")]) == 0  # fmt: skip
    with Image.open(tmp_path / "r" / "photo.png") as image:
        assert image.size == (50, 37)


@pytest.mark.slow
def test_a_checkpoint_of_the_other_task_is_refused(checkpoints, odd_images, tmp_path, capsys):
    code = main("colorization", [str(odd_images[0]), "--ckpt", str(checkpoints["reconstruction"]),
                                 "--out-dir", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "trained for reconstruction" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
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
    if os.path.exists(marker):
        os.remove(marker)
    crafted = tmp_path / "evil.ckpt"
    with open(crafted, "wb") as handle:
        pickle.dump({"aelab": {"task": "colorization"}, "payload": _RunsCode()}, handle)
    with pytest.raises(AelabError, match="could not be loaded as a checkpoint") as refused:
        load_network(crafted, "colorization")
    assert "weights_only=False" not in str(refused.value)  # never advise turning the safety off
    assert not os.path.exists(marker)
    with pytest.raises(AelabError, match="does not exist"):
        load_network(tmp_path / "missing.ckpt", "colorization")


def run_main(task, inputs, ckpt, out_dir, *extra) -> int:
    return main(task, [*map(str, inputs), "--ckpt", str(ckpt), "--out-dir", str(out_dir), *extra])


@pytest.mark.slow
def test_an_output_onto_an_input_is_refused_even_with_overwrite(checkpoints, tmp_path, capsys):
    rng = np.random.default_rng(1)
    source = tmp_path / "ok.png"
    Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(source)
    before = source.read_bytes()
    (tmp_path / "link").symlink_to(tmp_path)  # the same directory under another name
    for out_dir in (tmp_path, tmp_path / "link"):
        for extra in ((), ("--overwrite",)):
            assert run_main("reconstruction", [source], checkpoints["reconstruction"], out_dir,
                            *extra) == 2  # fmt: skip
            err = capsys.readouterr().err
            assert "would replace an input image" in err and err.count("\n") == 1
    assert source.read_bytes() == before


@pytest.mark.slow
def test_an_existing_output_is_kept_unless_overwrite(checkpoints, odd_images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.png").write_bytes(b"earlier output")
    ckpt = checkpoints["colorization"]
    assert run_main("colorization", odd_images, ckpt, out) == 2
    assert "already holds scan.png" in capsys.readouterr().err
    assert (out / "scan.png").read_bytes() == b"earlier output"
    assert not (out / "photo.png").exists()  # refused before the first image, not half-way
    assert run_main("colorization", odd_images, ckpt, out, "--overwrite") == 0
    with Image.open(out / "scan.png") as image, Image.open(odd_images[1]) as original:
        assert image.size == original.size
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "scan.png"]  # no temporaries


@pytest.mark.slow
def test_an_out_dir_that_is_a_file_or_not_writable_is_refused(
    checkpoints, odd_images, tmp_path, capsys, monkeypatch
):
    ckpt = checkpoints["reconstruction"]
    a_file = tmp_path / "taken.txt"
    a_file.write_text("a file")
    assert run_main("reconstruction", odd_images, ckpt, a_file) == 2
    assert f"--out-dir {a_file} is a file, not a directory" in capsys.readouterr().err
    assert run_main("reconstruction", odd_images, ckpt, a_file / "sub") == 2
    assert "lies under a file" in capsys.readouterr().err
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    if os.access(read_only, os.W_OK):  # root writes anyway: deny as a read-only mount would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: p != read_only and real_access(p, m))
    for out_dir in (read_only, read_only / "new" / "deeper"):
        assert run_main("reconstruction", odd_images, ckpt, out_dir) == 2
        err = capsys.readouterr().err
        assert f"{read_only} is not writable" in err and err.count("\n") == 1
    assert list(read_only.iterdir()) == []


@pytest.mark.slow
def test_the_script_exits_2_with_one_line_for_an_out_dir_that_is_a_file(checkpoints, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(photo)
    a_file = tmp_path / "taken.txt"
    a_file.write_text("a file")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reconstruct.py"), str(photo),
         "--ckpt", str(checkpoints["reconstruction"]), "--out-dir", str(a_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("aelab: --out-dir") and done.stderr.count("\n") == 1
    assert a_file.read_text() == "a file"


def grey_files(directory) -> dict:
    """Grey ramps in the modes that are not 8-bit, each with the float values it should give."""
    ramp = np.linspace(0, 1, 5 * 7).reshape(5, 7)
    sixteen = np.rint(ramp * 65535).astype(np.uint16)
    files = {}
    files["I;16 png"] = directory / "grey16.png"
    Image.fromarray(sixteen).save(files["I;16 png"])
    files["I;16B tiff"] = directory / "grey16b.tif"
    Image.fromarray(sixteen.astype(">u2")).save(files["I;16B tiff"])
    files["I tiff"] = directory / "grey32.tif"
    Image.fromarray(sixteen.astype(np.int32)).save(files["I tiff"])
    files["F tiff"] = directory / "greyf.tif"
    Image.fromarray(ramp.astype(np.float32)).save(files["F tiff"])
    return {
        name: (path, ramp if name == "F tiff" else sixteen / 65535) for name, path in files.items()
    }


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from aelab.analysis.predict import read_rgb

    for name, (path, expected) in grey_files(tmp_path).items():
        with Image.open(path) as image:
            assert image.mode == name.split()[0]
        rgb = read_rgb(path)
        assert rgb.shape == (1, 3, 5, 7) and torch.equal(rgb[0, 0], rgb[0, 2])
        assert np.abs(rgb[0, 1].numpy() - expected).max() < 1e-6, name


@pytest.mark.slow
def test_a_16_bit_png_is_colorized_at_its_own_lightness(checkpoints, tmp_path):
    ramp = np.tile(np.linspace(2000, 60000, 24), (20, 1)).astype(np.uint16)
    source = tmp_path / "deep.png"
    Image.fromarray(ramp).save(source)
    assert run_main("colorization", [source], checkpoints["colorization"], tmp_path / "o") == 0
    grey = torch.from_numpy(ramp / 65535).float().expand(1, 3, -1, -1)
    expected = rgb_to_lab_normalized(grey)[:, 0] * 100
    difference = (lightness(tmp_path / "o" / "deep.png") - expected).abs()
    assert difference.max() < 1.5 and expected.min() < 20  # clipped at 255 it would be all 100


@pytest.mark.slow
def test_an_image_over_the_memory_bound_is_one_line_naming_it(
    checkpoints, odd_images, tmp_path, capsys, monkeypatch
):
    from aelab.analysis import photos

    # photo.jpg decodes into 1,850 × 4 bytes, over the bound; scan.png into 399 × 1, under it
    monkeypatch.setattr(photos, "PHOTO_BYTES", photos.TILE_BYTES + 1000)
    out = tmp_path / "o"
    assert run_main("colorization", odd_images, checkpoints["colorization"], out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aelab: {odd_images[0]} is 50 × 37 pixels")
    assert "MB" in err and err.count("\n") == 1
    assert not out.exists()  # scan.png was not written either: checked first
