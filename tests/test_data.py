import hashlib
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch, sized_len
from lightning.pytorch.utilities.data import _is_dataloader_shuffled
from PIL import Image
from torchvision.datasets import ImageFolder

from aelab.data import ImageDataModule
from aelab.data.batches import batch_loader
from aelab.data.image_io import read_rgb_float, read_rgb_uint8
from aelab.data.sources import (
    CACHE_FORMAT,
    IMAGE_EXTENSIONS,
    list_folder_images,
    load_cifar10,
    load_image_folder,
)
from aelab.data.splits import split_parts
from aelab.errors import AelabError
from tests.conftest import make_image_folder, write_images


def parts(train: int = 50, test: int = 10) -> dict[str, torch.Tensor]:
    """Parts whose every image is distinct: image i has all pixels = its id (mod 256 per channel)."""
    ids = torch.arange(train + test)
    images = torch.stack([ids % 256, ids // 256, torch.zeros_like(ids)], 1)[:, :, None, None]
    images = images.expand(-1, -1, 2, 2).to(torch.uint8).contiguous()
    return {"train": images[:train], "test": images[train:]}


def ids(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist())


def test_pooled_split_sizes_are_80_10_10_and_disjoint():
    splits = split_parts(parts(500, 100), "pooled", 0.1, 0.1, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 480, "val": 60, "test": 60}
    train, val, test = ids(splits["train"]), ids(splits["val"]), ids(splits["test"])
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(600))


def test_split_is_deterministic_and_its_seed_is_its_own():
    a = split_parts(parts(), "pooled", seed=1)
    b = split_parts(parts(), "pooled", seed=1)
    c = split_parts(parts(), "pooled", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["test"], c["test"])


def test_official_split_keeps_the_official_test_set():
    splits = split_parts(parts(500, 100), "official", val_fraction=0.1, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 450, "val": 50, "test": 100}
    assert ids(splits["test"]) == set(range(500, 600))
    assert ids(splits["train"]) | ids(splits["val"]) == set(range(500))


def test_subset_takes_a_seeded_sample_of_that_many_images():
    splits = split_parts(parts(500, 100), "pooled", subset=200, seed=0)
    assert sum(len(v) for v in splits.values()) == 200
    official = split_parts(parts(500, 100), "official", subset=120, seed=0)
    assert len(official["test"]) == 20 and len(official["train"]) + len(official["val"]) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "random"}, "data.split"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "fraction"),
        ({"val_fraction": 0.0}, "fraction"),
        ({"subset": 10, "val_fraction": 0.01}, "empty"),
    ],
)
def test_bad_split_settings_are_refused(kwargs, message):
    with pytest.raises(AelabError, match=message):
        split_parts(parts(), **kwargs)


def test_image_folder_decodes_every_image_and_caches_outside_the_root(image_folder, tmp_path):
    cache = tmp_path / "cache"
    loaded = load_image_folder(image_folder, 32, cache)
    assert {k: tuple(v.shape) for k, v in loaded.items()} == {
        "train": (80, 3, 32, 32),
        "test": (20, 3, 32, 32),
    }
    assert loaded["train"].dtype == torch.uint8 and loaded["train"].float().std() > 10
    (cached,) = cache.iterdir()
    again = load_image_folder(image_folder, 32, cache)
    assert all(torch.equal(loaded[k], again[k]) for k in loaded)
    assert not any(p.suffix == ".pt" for p in image_folder.rglob("*"))
    assert cached.stat().st_size > 80 * 3 * 32 * 32


def test_a_changed_or_added_image_makes_a_new_cache_entry(tmp_path):
    root, cache = make_image_folder(tmp_path / "images", 3, 1), tmp_path / "cache"
    first = load_image_folder(root, 32, cache)
    write_images(root / "train" / "cats", 1, seed=99)  # 0000.png rewritten: new content and mtime
    second = load_image_folder(root, 32, cache)
    assert not torch.equal(first["train"], second["train"]) and len(list(cache.iterdir())) == 2
    write_images(root / "test" / "cats", 2, seed=5)  # test/cats/0001.png is new
    assert len(load_image_folder(root, 32, cache)["test"]) == len(first["test"]) + 1
    assert len(list(cache.iterdir())) == 3


def test_cache_key_is_every_files_relative_path_size_and_mtime(tmp_path):
    """Pinned to its formula, so that a faster way to compute it cannot quietly orphan caches."""
    root, cache = make_image_folder(tmp_path / "images", 2, 1), tmp_path / "cache"
    load_image_folder(root, 32, cache)
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{root.resolve()}|32".encode())
    for part in ("train", "test"):
        for path in sorted((root / part).rglob("*.png")):
            stat = path.stat()
            relative = path.relative_to(root).as_posix()
            digest.update(f"|{part}|{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    (cached,) = cache.iterdir()
    assert cached.name == f"folder-images-{digest.hexdigest()[:16]}.pt"


def test_image_folder_resizes_and_ignores_hidden_dirs(tmp_path):
    write_images(tmp_path / "a", 3, size=(50, 37))
    write_images(tmp_path / ".ipynb_checkpoints", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    loaded = load_image_folder(tmp_path, 16)
    assert list(loaded) == ["all"] and loaded["all"].shape == (3, 3, 16, 16)


def test_corrupt_images_are_named_in_the_error(tmp_path):
    write_images(tmp_path / "a", 2)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(AelabError, match=r"broken\.jpg"):
        load_image_folder(tmp_path, 32)


def test_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(AelabError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AelabError, match="no class directories"):
        load_image_folder(tmp_path / "empty", 32)
    (tmp_path / "one" / "cls").mkdir(parents=True)
    with pytest.raises(AelabError, match="at least one image"):
        load_image_folder(tmp_path / "one", 32)


def test_missing_cifar10_without_download_explains_the_way_out(tmp_path):
    with pytest.raises(AelabError, match="data=folder"):
        load_cifar10(tmp_path, download=False)


def test_batches_are_index_slices_in_the_epochs_order():
    images = parts(100, 0)["train"]
    loader = batch_loader(images, batch_size=32, shuffle=True, seed=3)
    loader.sampler.set_epoch(1)
    epoch_one = list(loader)
    assert [len(b) for b in epoch_one] == [32, 32, 32, 4]
    assert torch.equal(torch.cat(epoch_one), images[loader.sampler.order()])
    assert ids(torch.cat(epoch_one)) == set(range(100))
    loader.sampler.set_epoch(2)
    assert not torch.equal(torch.cat(list(loader)), torch.cat(epoch_one))
    loader.sampler.set_epoch(1)
    assert torch.equal(torch.cat(list(loader)), torch.cat(epoch_one))


def test_lightning_sets_the_epoch_and_counts_the_batches_of_a_plain_batch_iterable():
    loader = batch_loader(parts(100, 0)["train"], batch_size=32, shuffle=True, seed=3)
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls before every epoch
    assert loader.sampler.epoch == 5
    assert sized_len(loader) == 4 == len(list(loader))
    assert not _is_dataloader_shuffled(loader)  # Lightning's check on val/test loaders runs


def test_datamodule_serves_float_rgb_or_normalised_lab(image_folder, tmp_path):
    dm = ImageDataModule(source="folder", root=str(image_folder), batch_size=16, color_space="lab")
    dm.setup()
    assert dm.split_sizes() == {"val": 10, "test": 10, "train": 80}
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (16, 3, 32, 32)
    lab = dm.on_after_batch_transfer(batch, 0)
    assert lab.dtype == torch.float32 and lab.min() >= 0 and lab.max() <= 1
    dm.color_space = "rgb"
    assert torch.allclose(dm.on_after_batch_transfer(batch, 0), batch / 255)


def test_ddp_with_more_processes_than_a_splits_images_is_refused(image_folder):
    dm = ImageDataModule(source="folder", root=str(image_folder), batch_size=16)
    dm.trainer = SimpleNamespace(world_size=10)  # val and test hold 10 images: one per process
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=11)
    with pytest.raises(
        AelabError, match=r"fewer images than the 11 DDP processes: val 10, test 10"
    ):
        dm.setup("fit")


def test_overfit_batches_trains_on_the_same_first_batches_every_epoch(image_folder):
    dm = ImageDataModule(source="folder", root=str(image_folder), batch_size=16)
    dm.setup("fit")
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    trainer = SimpleNamespace(strategy=cpu, global_rank=0, world_size=1, overfit_batches=0)
    dm.trainer = trainer
    shuffled = dm.train_dataloader()
    assert not torch.equal(torch.cat(list(shuffled)), dm.splits["train"])
    trainer.overfit_batches = 2
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        assert torch.equal(torch.cat(list(loader)), dm.splits["train"])


@pytest.mark.slow
@pytest.mark.skipif(
    "AELAB_CIFAR10_JPG" not in os.environ,
    reason="needs the shared CIFAR-10 copy; .ci/run sets AELAB_CIFAR10_JPG (test_integration too)",
)
def test_shared_cifar10_copy_has_all_60000_images():
    pytest.importorskip("torchvision")
    root = os.environ["AELAB_CIFAR10_JPG"]
    dm = ImageDataModule(source="folder", root=root, cache_dir=os.environ.get("AELAB_CACHE_DIR"))
    dm.setup()
    assert dm.split_sizes() == {"val": 6000, "test": 6000, "train": 48000}


def test_the_listing_is_imagefolders_so_caches_of_ordinary_folders_stay_valid(tmp_path):
    root = make_image_folder(tmp_path / "images", 3, 1)
    write_images(root / "train" / "cats" / "nested" / ".hidden-dir", 2, seed=3)
    write_images(root / "train" / "cats" / "nested-b", 2, seed=4)
    (root / "train" / "cats" / ".0000.png").write_bytes(b"hidden file")
    (root / "train" / "ships" / "0002.JPG").write_bytes(
        (root / "train" / "ships" / "0000.png").read_bytes()
    )

    def valid(path: str) -> bool:  # the filter the folder source gave ImageFolder
        return path.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(path).startswith(
            "."
        )

    for part in ("train", "test"):
        expected = [p for p, _ in ImageFolder(str(root / part), is_valid_file=valid).samples]
        assert list_folder_images(root / part) == expected
    assert len(list_folder_images(root / "train")) == 11


def test_a_symlink_loop_neither_hangs_nor_multiplies(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", 20, 5)
    (root / "train" / "cats" / "sub").symlink_to("..")  # train/cats/sub/cats/sub/... forever
    (root / "train" / "ships" / "up").symlink_to("../..")  # reaches test/ from train/
    loaded = load_image_folder(root, 32)
    plain = load_image_folder(make_image_folder(tmp_path / "plain", 20, 5), 32)
    assert {k: len(v) for k, v in loaded.items()} == {"train": 40, "test": 10}
    assert all(torch.equal(loaded[k], plain[k]) for k in plain)  # the same images, in order
    # listed again: ships and test via cats/sub/ships/up, cats and test via ships/up
    assert "Dropped: 60 from train" in caplog.text


def test_a_test_link_to_a_train_image_stays_in_train_only(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", 4, 3)
    (root / "test" / "cats" / "9999.png").symlink_to(root / "train" / "ships" / "0001.png")
    (root / "test" / "ships" / "twice.png").symlink_to("0000.png")  # the same test file twice
    loaded = load_image_folder(root, 32)
    assert {k: len(v) for k, v in loaded.items()} == {"train": 8, "test": 6}
    train = {bytes(image.numpy()) for image in loaded["train"]}
    assert not any(bytes(image.numpy()) in train for image in loaded["test"])
    assert "Dropped: 2 from test" in caplog.text
    (root / "outside").mkdir()
    (root / "outside" / "x.png").write_bytes((root / "train" / "cats" / "0000.png").read_bytes())
    for part in ("train", "test"):  # held by neither split's directory: train wins
        (root / part / "cats" / "linked.png").symlink_to(root / "outside" / "x.png")
    loaded = load_image_folder(root, 32)
    assert {k: len(v) for k, v in loaded.items()} == {"train": 9, "test": 6}


def test_a_split_made_only_of_the_other_splits_files_is_refused(tmp_path):
    write_images(tmp_path / "train" / "a", 3)
    (tmp_path / "test").symlink_to("train")
    with pytest.raises(AelabError, match="also under another split"):
        load_image_folder(tmp_path, 32)


def test_16_bit_and_float_images_decode_to_uint8_by_scaling(tmp_path):
    ramp = np.linspace(0, 1, 6 * 6).reshape(6, 6)
    sixteen = np.rint(ramp * 65535).astype(np.uint16)
    folder = tmp_path / "a"
    folder.mkdir()
    Image.fromarray(sixteen).save(folder / "0.png")
    Image.fromarray(sixteen.astype(">u2")).save(folder / "1.tif")
    Image.fromarray(sixteen.astype(np.int32)).save(folder / "2.tif")
    Image.fromarray(ramp.astype(np.float32)).save(folder / "3.tif")
    modes = [Image.open(folder / name).mode for name in ("0.png", "1.tif", "2.tif", "3.tif")]
    assert modes == ["I;16", "I;16B", "I", "F"]
    loaded = load_image_folder(tmp_path, 6)["all"]
    expected = torch.from_numpy(np.rint(ramp * 255).astype(np.uint8)).expand(4, 3, 6, 6)
    assert torch.equal(loaded, expected)  # clipped at 255, all but the first pixel were white


@pytest.mark.parametrize(
    ("mode", "pixel", "rgb"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("L", 51, (51, 51, 51)),
        ("LA", (51, 7), (51, 51, 51)),
        ("P", 2, (0, 0, 255)),  # palette index 2 below
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 257 * 51, (51, 51, 51)),
        ("I;16B", 257 * 51, (51, 51, 51)),
        ("I", 257 * 51, (51, 51, 51)),
        ("I", 70000, (255, 255, 255)),
        ("F", 0.2, (51, 51, 51)),
        ("F", -3.0, (0, 0, 0)),
    ],
)
def test_the_shared_reader_scales_every_mode(tmp_path, mode, pixel, rgb):
    image = Image.new(mode, (3, 2), pixel)
    if mode == "P":
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    path = tmp_path / ("x.tif" if mode in ("I;16B", "I", "F") else "x.png")
    image.save(path)
    assert (read_rgb_uint8(path) == np.array(rgb, dtype=np.uint8)).all()
    assert np.allclose(
        read_rgb_float(path), np.array(rgb) / 255, atol=1e-6 if mode != "F" else 2e-3
    )
    assert read_rgb_uint8(path, size=4).shape == (4, 4, 3)


def test_an_image_over_the_pixel_limit_is_one_line_naming_it(tmp_path, monkeypatch):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1, size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 × 32 is over twice that, 8 × 8 not
    with pytest.raises(AelabError) as caught:
        load_image_folder(tmp_path, 8)
    message = str(caught.value)
    assert message.startswith("2 image file(s) could not be decoded:") and "\n" not in message
    assert f"{tmp_path / 'a' / '0000.png'} (Image size (1024 pixels) exceeds limit" in message
    assert "decompression-bomb" in message and "0000.png (" in message
    (tmp_path / "a" / "0001.png").unlink()
    with pytest.raises(AelabError, match=r"a/0000\.png could not be read as an image \(Image size"):
        load_image_folder(tmp_path, 8)
    with pytest.raises(AelabError, match=r"0000\.png could not be read as an image \(Image size"):
        read_rgb_float(tmp_path / "a" / "0000.png")
