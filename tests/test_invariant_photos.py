"""Photos of any size in bounded memory: tiles that equal one whole run, a peak RSS under 1 GB
measured in a subprocess, EXIF orientation honoured, and a size guard that says the bound."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageOps

from aelab.analysis import photos
from aelab.analysis.png_stream import PngStream
from aelab.analysis.predict import (
    Colorizer,
    colorize,
    conversion_for,
    converted_tiles,
    read_rgb,
    reconstruct,
)
from aelab.analysis.predict_cli import main
from aelab.models import ConvAutoEncoder
from aelab.tasks.ab_bins import bin_count
from tests.conftest import CLEAN_ENVIRONMENT, REPO

NETWORKS = {
    "assignment": lambda: Colorizer(ConvAutoEncoder(1, 2)),
    "deep, avg, bicubic, k=5": lambda: Colorizer(
        ConvAutoEncoder(1, 2, [8, 12, 16, 32], 5, "avg", "bicubic")
    ),
    "no pooling": lambda: Colorizer(ConvAutoEncoder(1, 2, [8, 12], 3, "none")),
    "ce, stride 4": lambda: Colorizer(ConvAutoEncoder(1, bin_count()), True, 0.38, 4),
    "ce, stride 2, bilinear": lambda: Colorizer(
        ConvAutoEncoder(1, bin_count(), [8, 12, 16], 3, "max", "bilinear"), True, 0.38, 2
    ),
    "reconstruction": lambda: ConvAutoEncoder(3, 3, [8, 12, 16], 3, "max", "bicubic"),
}


def smooth_photo(path, height, width, seed=0):
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BICUBIC).save(path)
    return path


def tiled_and_whole(network, path, tiling_change, finish=None):
    """(the conversion in tiles, assembled; the same over the whole image at once)."""
    conversion = conversion_for(network)
    conversion = replace(
        conversion, tiling=replace(conversion.tiling, **tiling_change(conversion.tiling))
    )
    if finish is not None:
        conversion = replace(conversion, finish=finish)
    rgb = read_rgb(path)
    whole = conversion.finish(conversion.predict(rgb))
    tiled, tiles = torch.full_like(whole, -1.0), 0
    with Image.open(path) as image:
        for tile, part in converted_tiles(conversion, photos.Photo(image, None)):
            tiled[..., tile.core.top : tile.core.bottom, tile.core.left : tile.core.right] = part
            tiles += 1
    return tiled, whole, tiles


def random_network(name):
    torch.manual_seed(0)
    network = NETWORKS[name]()
    for parameter in (network.network if isinstance(network, Colorizer) else network).parameters():
        torch.nn.init.normal_(parameter, std=0.3)  # strong weights: a seam would show
    return network


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_tiles_equal_one_whole_run(name, tmp_path):
    network = random_network(name)
    path = smooth_photo(tmp_path / "photo.png", 40, 53)
    many = lambda tiling: {"core": max(2 * tiling.multiple, 8)}  # noqa: E731
    # The network's prediction (normalised Lab, or RGB), before the gamut bisection's 12 steps
    # turn float rounding into steps of 2⁻¹²:
    tiled, whole, tiles = tiled_and_whole(network, path, many, finish=lambda x: x)
    assert tiles >= 12 and tiled.min() >= 0  # every pixel written, by many tiles
    assert (tiled - whole).abs().max() < 5e-4  # float32 sums in another order; a seam is ≫ 1e-2
    tiled, whole, _ = tiled_and_whole(network, path, many)  # RGB: within one 8-bit step
    assert (tiled - whole).abs().max() < 1 / 255
    expected = colorize if isinstance(network, Colorizer) else reconstruct
    assert torch.equal(whole, expected(network, read_rgb(path)))  # what the report, showcase use


def test_a_margin_below_the_receptive_field_would_show_seams(tmp_path):
    """The comparison above can fail: without enough context, tiles differ from the whole."""
    network = random_network("no pooling")  # its receptive radius is exact: 3 convs of 3×3
    path = smooth_photo(tmp_path / "photo.png", 40, 40)
    narrow = lambda tiling: {"core": 4, "margin": tiling.margin - 1}  # noqa: E731
    tiled, whole, _ = tiled_and_whole(network, path, narrow, finish=lambda x: x)
    assert (tiled - whole).abs().max() > 1e-2


def exif_rotated(path, orientation: int) -> Image.Image:
    """A photo displayed 20 wide × 40 high, stored turned as EXIF `orientation` says; the upright
    image is returned."""
    upright = Image.fromarray(
        np.random.default_rng(orientation).integers(0, 256, (40, 20, 3), np.uint8)
    )
    method = ImageOps.exif_transpose  # the stored image is the upright one turned back
    inverse = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}.get(orientation)
    stored = upright if inverse is None else upright.transpose(photos.UPRIGHT[inverse])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored.save(path, exif=exif)
    if path.suffix == ".png":  # lossless: the file shows exactly the upright image
        with Image.open(path) as saved:
            assert np.array_equal(np.asarray(method(saved)), np.asarray(upright))
    return upright


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured_in_every_window(orientation, tmp_path):
    path = tmp_path / "photo.png"
    upright = np.asarray(exif_rotated(path, orientation), dtype=np.float32) / 255
    assert np.allclose(read_rgb(path)[0].permute(1, 2, 0).numpy(), upright)
    with photos.open_photo(path) as photo:
        photo = photos.turned_upright(photo)
        assert photo.size == (40, 20)
        window = photos.Box(3, 5, 31, 17)
        got = photo.read(window)
        assert np.allclose(got, upright[3:31, 5:17])


@pytest.mark.slow
def test_a_rotated_photo_comes_out_as_displayed(trained, tmp_path):
    checkpoint = trained("colorization") / "checkpoints" / "best.ckpt"
    path = tmp_path / "phone.jpg"
    exif_rotated(path, 6)  # a portrait photo from a phone held upright
    with Image.open(path) as stored:
        assert stored.size == (40, 20)
    out = tmp_path / "out"
    assert main("colorization", [str(path), "--ckpt", str(checkpoint), "--out-dir", str(out)]) == 0
    with Image.open(out / "phone.png") as written:
        assert written.size == (20, 40)


PEAK_RSS = """
import resource, sys
import aelab.analysis.predict  # torch and the rest the script loads: the imports' share
from aelab.analysis.predict_cli import main
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
code = main(sys.argv[1], sys.argv[2:])
print(imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_large_photo_is_colorized_under_1_gb(trained, tmp_path):
    checkpoint = trained("colorization") / "checkpoints" / "best.ckpt"
    photo = smooth_photo(tmp_path / "large.jpg", 2000, 3000)  # 6 MP: decoded whole, 24 MB
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "colorization", str(photo), "--ckpt", str(checkpoint),
         "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**CLEAN_ENVIRONMENT, "OMP_NUM_THREADS": "1"},  # a shared CI machine: no oversubscription
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported, peak = map(int, done.stderr.strip().splitlines()[-1].split())
    # The imports' share (torch's libraries: 0.7-0.9 GB of a CUDA build, with the page cache's
    # mood) is not the photo's: what the photo adds stays within what the bound leaves it.
    assert peak - imported < photos.PHOTO_BYTES, f"{imported / 2**20:.0f} → {peak / 2**20:.0f} MB"
    with Image.open(out / "large.png") as written:
        assert written.size == (3000, 2000)
        band = np.asarray(written.crop((0, 990, 3000, 1010)), dtype=np.int16)
    assert np.abs(np.diff(band, axis=0)).max() < 40  # no seam between bands: a smooth photo


def huge_png_header(path, width: int, height: int, colour_type: int = 2) -> None:
    """A PNG whose header promises width × height pixels, and almost nothing after: a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.mark.slow
def test_the_size_guard_says_the_bound_in_one_paragraph_and_exits_2(trained, tmp_path):
    checkpoint = trained("colorization") / "checkpoints" / "best.ckpt"
    small = smooth_photo(tmp_path / "small.png", 20, 20)
    for width, height in ((8000, 6000), (20000, 10000)):  # 48 MP; 200 MP, beyond Pillow's own guard
        bomb = tmp_path / f"bomb{width}.png"
        huge_png_header(bomb, width, height)
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "colorize.py"), str(small), str(bomb),
             "--ckpt", str(checkpoint), "--out-dir", str(out)],
            capture_output=True, text=True, timeout=120, env=CLEAN_ENVIRONMENT,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.startswith(f"aelab: {bomb} is {width:,} × {height:,} pixels")
        assert "1,024 MB" in done.stderr and "megapixels of 8-bit colour" in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert not out.exists()  # refused from the headers, before the first photo


def test_the_guard_weighs_what_decoding_takes(tmp_path):
    """Grey decodes into a quarter of colour's bytes, so it may be four times as large; the
    guard is restored for the rest of the process."""
    before = Image.MAX_IMAGE_PIXELS
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.png"
    huge_png_header(grey, 10000, 10000, colour_type=0)  # 100 MP of grey: 100 MB, accepted
    huge_png_header(colour, 10000, 10000)  # 100 MP of colour: 400 MB, refused
    with photos.open_photo(grey) as photo:
        assert photo.image.size == (10000, 10000)
    with (
        pytest.raises(photos.AelabError, match="it needs about 429 MB"),
        photos.open_photo(colour),
    ):
        pass
    assert before == Image.MAX_IMAGE_PIXELS


def test_png_stream_writes_what_pillow_reads(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    rows[10:20] = rows[10]  # flat rows: other filters win there
    buffer = io.BytesIO()
    png = PngStream(buffer, 23, 37)
    for start in (0, 5, 30):
        png.write(rows[start : {0: 5, 5: 30, 30: 37}[start]])
    png.close()
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), rows)
    short = PngStream(io.BytesIO(), 23, 37)
    short.write(rows[:5])
    with pytest.raises(ValueError, match="5 rows written of 37"):
        short.close()


@pytest.mark.slow
def test_the_prediction_path_does_not_import_lightning():
    """Lightning's import alone takes 300 MB of the 1 GB bound."""
    code = "import sys, aelab.analysis.predict; print(json.dumps('lightning' in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", f"import json; {code}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) is False


@pytest.mark.slow
def test_a_truncated_photo_is_named_as_the_input_and_leaves_no_temporary(trained, tmp_path, capsys):
    checkpoint = trained("colorization") / "checkpoints" / "best.ckpt"
    whole = smooth_photo(tmp_path / "whole.jpg", 300, 400)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:2000])  # the header reads; decoding fails half-way
    out = tmp_path / "out"
    assert main("colorization", [str(cut), "--ckpt", str(checkpoint), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aelab: {cut} could not be read as an image") and err.count("\n") == 1
    assert list(out.iterdir()) == []
