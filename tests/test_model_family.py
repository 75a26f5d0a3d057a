"""The network family (model.norm, blocks, pooling=stride, upsample_mode, latent_channels,
skips): the seed network unchanged, every option building and keeping the image size, the code
size and the bottleneck as they are, tiles equal to one whole run, and the ce head on each."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from aelab.analysis.predict import Colorizer, conversion_for
from aelab.config.schema import SCHEMAS, config_problems
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.models.autoencoder import bottleneck
from aelab.runtime.train import train
from aelab.tasks.ab_bins import bin_count, classifier_logits
from tests.conftest import compose_config
from tests.test_invariant_photos import smooth_photo, tiled_and_whole

Q = bin_count()

# Recorded from the seed network before the family existed: (in, out) → parameters, state-dict
# keys, and the output's sum, absolute sum and a position-weighted sum on torch.manual_seed(0)
# input (2 images of 32×32) with torch.manual_seed(0) initialisation.
SEED_KEYS = [
    f"{part}.{index}.{kind}"
    for part, index in [
        ("encoder", 0),
        ("encoder", 3),
        ("encoder", 6),
        ("decoder", 1),
        ("decoder", 4),
    ]
    for kind in ("weight", "bias")
]
RECORDED = {
    (3, 3): (4911, -95.81609999202192, 252.1158126462251, 0.17591146909597705),
    (1, 2): (4658, -131.38020548783243, 131.38020548783243, -0.2271990497521966),
    (1, Q): (29401, 1925.8256494198286, 25451.21664411362, 5.909677906276043),
}
RECORDED_CE_STRIDE_4_SUM = 102.58882567725959


def seeded(*args, **kwargs) -> tuple[ConvAutoEncoder, torch.Tensor]:
    torch.manual_seed(0)
    network = ConvAutoEncoder(*args, **kwargs)
    torch.manual_seed(0)
    return network, torch.rand(2, network.in_channels, 32, 32)


def checksums(output: torch.Tensor) -> tuple[float, float, float]:
    output = output.double()
    weights = torch.arange(output.numel()).reshape(output.shape).double().sin()
    return output.sum().item(), output.abs().sum().item(), (output * weights).sum().item()


@pytest.mark.parametrize("channels", sorted(RECORDED))
def test_the_seed_network_is_unchanged(channels):
    network, x = seeded(*channels)
    parameters, *sums = RECORDED[channels]
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert list(network.state_dict()) == SEED_KEYS  # old checkpoints load
    with torch.no_grad():
        assert checksums(network(x)) == pytest.approx(sums, rel=1e-5, abs=1e-4)


def test_the_seed_bin_head_is_unchanged():
    network, x = seeded(1, Q)
    with torch.no_grad():
        logits = classifier_logits(network, x[:, :1], 4)
    assert logits.shape == (2, Q, 8, 8)
    assert logits.double().sum().item() == pytest.approx(RECORDED_CE_STRIDE_4_SUM, rel=1e-5)


# Each option alone, on top of the seed network's settings.
OPTIONS = {
    "norm=batch": {"norm": "batch"},
    "norm=group": {"norm": "group"},
    "blocks=2": {"blocks": 2},
    "pooling=stride": {"pooling": "stride"},
    "upsample_mode=transposed": {"upsample_mode": "transposed"},
    "upsample_mode=pixelshuffle": {"upsample_mode": "pixelshuffle"},
    "latent_channels=3": {"latent_channels": 3},
    "skips": {"skips": True},
    "skips, pooling=none": {"skips": True, "pooling": "none"},
    "resnet": {
        "widths": [16, 32],
        "blocks": 1,
        "pooling": "stride",
        "norm": "batch",
        "latent_channels": 3,
        "upsample_mode": "transposed",
    },
    "unet": {"widths": [16, 32, 64], "skips": True, "norm": "batch", "upsample_mode": "bilinear"},
}
GRID = [
    {"pooling": pooling, "upsample_mode": mode, "skips": skips, **extra}
    for pooling in ("max", "stride", "none")
    for mode in ("nearest", "transposed", "pixelshuffle")
    for skips in (False, True)
    for extra in ({}, {"norm": "group", "blocks": 1, "latent_channels": 5, "kernel_size": 5})
]


def family_network(channels: tuple[int, int], settings: dict) -> ConvAutoEncoder:
    torch.manual_seed(0)
    return ConvAutoEncoder(*channels, **{"widths": [4, 6, 8], **settings}).eval()


# Each single option with both tasks' channels; the grid's combinations alternate between them.
SHAPE_CASES = [
    *((channels, settings) for settings in OPTIONS.values() for channels in [(3, 3), (1, 2)]),
    *(([(3, 3), (1, 2)][(index // 2 + index) % 2], s) for index, s in enumerate(GRID)),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("channels", "settings"), SHAPE_CASES, ids=map(str, range(len(SHAPE_CASES)))
)
def test_every_option_keeps_the_image_size_and_the_code_its_stated_shape(channels, settings):
    network = family_network(channels, settings)
    for side in (32, 64):
        x = torch.rand(1, channels[0], side, side)
        with torch.no_grad():
            assert network(x).shape == (1, channels[1], side, side)
            assert tuple(network.encode(x).shape[1:]) == network.latent_shape(side, side)
    assert network.pooling_stages == (0 if network.pooling == "none" else len(network.widths) - 1)


@pytest.mark.parametrize("settings", OPTIONS.values(), ids=OPTIONS)
def test_config_rebuilds_the_same_network(settings):
    network = family_network((3, 3), settings)
    clone = ConvAutoEncoder.from_config(network.config()).eval()
    clone.load_state_dict(network.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(network(x), clone(x))


def test_each_option_builds_what_it_names():
    from torch import nn

    from aelab.models.blocks import PixelShuffleUp, ResidualBlock, SkipMerge

    def kinds(settings):
        return {type(m) for m in family_network((3, 3), settings).modules()}

    assert nn.BatchNorm2d in kinds({"norm": "batch"}) and nn.GroupNorm in kinds({"norm": "group"})
    assert (
        sum(isinstance(m, ResidualBlock) for m in family_network((3, 3), {"blocks": 2}).modules())
        == 2 * 4
    )
    stride = kinds({"pooling": "stride"})
    assert not stride & {nn.MaxPool2d, nn.AvgPool2d}
    assert nn.ConvTranspose2d in kinds({"upsample_mode": "transposed"})
    assert PixelShuffleUp in kinds({"upsample_mode": "pixelshuffle"}) - kinds({})
    assert SkipMerge in kinds({"skips": True}) and SkipMerge not in kinds({})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"norm": "layer"}, r"model\.norm=layer: model\.norm must be one of none, batch, group"),
        ({"blocks": -1}, r"model\.blocks=-1: model\.blocks must be an integer ≥ 0"),
        ({"latent_channels": 0}, r"model\.latent_channels=0: .* an integer ≥ 1"),
        ({"pooling": "strided"}, r"did you mean stride\?"),
        ({"upsample_mode": "transpose"}, r"did you mean transposed\?"),
        ({"skips": True, "widths": [8]}, r"model\.skips=true needs at least two model\.widths"),
    ],
)
def test_an_impossible_setting_is_refused_in_one_paragraph(settings, message):
    with pytest.raises(AelabError, match=message) as error:
        ConvAutoEncoder(**settings)
    assert "\n" not in str(error.value)


def test_latent_channels_sets_the_code_size_apart_from_the_widths():
    for channels, values in ((3, 192), (16, 1024)):
        network = ConvAutoEncoder(widths=[16, 32, 64], latent_channels=channels)
        assert network.latent_shape(32, 32) == (channels, 8, 8)
        facts = bottleneck(network, 32)
        assert facts["latent_size"] == values and facts["has_bottleneck"]
        assert f"latent {channels}×8×8 = {values:,} values" in facts["summary"]


def test_a_code_of_its_own_channels_is_decoded_by_a_mirror_of_the_encoder():
    from torch import nn

    def conv_widths(part):  # (in, out) of each 3×3 conv, in order
        return [(m.in_channels, m.out_channels) for m in part.modules() if isinstance(m, nn.Conv2d)]

    mirrored = ConvAutoEncoder(widths=[16, 32, 64], latent_channels=3)
    # lifted back to 64 at the code's scale, then a stage per encoder width, then the output
    assert conv_widths(mirrored.decoder) == [(3, 64), (64, 32), (32, 16), (16, 3)]
    assert conv_widths(mirrored.encoder)[-1] == (64, 3)  # the 1×1 code conv
    # without a code of its own: the seed's decoder, a conv per pooling
    assert conv_widths(ConvAutoEncoder(widths=[16, 32, 64]).decoder) == [(64, 32), (32, 3)]


def test_skips_in_reconstruction_are_no_bottleneck_and_in_colorization_no_copy():
    reconstructor = bottleneck(ConvAutoEncoder(skips=True, latent_channels=3), 32)
    assert reconstructor["latent_size"] == 192 and not reconstructor["has_bottleneck"]
    assert "NO bottleneck" in reconstructor["summary"]
    assert "model.skips=true" in reconstructor["summary"]
    colorizer = bottleneck(ConvAutoEncoder(1, 2, skips=True), 32)
    assert (
        "copy its input" not in colorizer["summary"] and "skips around it" in colorizer["summary"]
    )
    assert bottleneck(ConvAutoEncoder(), 32)["has_bottleneck"]  # without skips: as before


def test_a_network_with_skips_has_no_decoder_of_its_own():
    network = ConvAutoEncoder(skips=True)
    with pytest.raises(AelabError, match="decodes from its encoder's stages"):
        network.decode(network.encode(torch.rand(1, 3, 32, 32)))
    with pytest.raises(AelabError, match="multiples of 2"):
        network(torch.rand(1, 3, 30, 30))  # 30 → 15 → 7 → 14: the 15×15 stage cannot join


@pytest.mark.slow
@pytest.mark.parametrize("settings", OPTIONS.values(), ids=OPTIONS)
def test_the_bin_head_works_with_every_option(settings):
    network = family_network((1, Q), settings)
    lightness = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(classifier_logits(network, lightness, 1), network(lightness))
        for stride in (2, 4):
            side = 32 // min(stride, 2**network.pooling_stages)
            assert classifier_logits(network, lightness, stride).shape == (2, Q, side, side)


TILED = {
    "resnet, reconstruction": lambda: ConvAutoEncoder(
        3, 3, [4, 6, 8], pooling="stride", upsample_mode="transposed", norm="batch", blocks=1,
        latent_channels=3,
    ),
    "unet, pixel shuffle": lambda: Colorizer(
        ConvAutoEncoder(1, 2, [4, 6, 8], upsample_mode="pixelshuffle", skips=True)
    ),
    "unet, ce stride 4": lambda: Colorizer(
        ConvAutoEncoder(1, Q, [4, 6, 8], pooling="stride", skips=True, norm="batch"), True, 0.38, 4
    ),
    "blocks, pixel shuffle, ce stride 2": lambda: Colorizer(
        ConvAutoEncoder(1, Q, [4, 6, 8], upsample_mode="pixelshuffle", blocks=1, kernel_size=5),
        True, 0.38, 2,
    ),
    "skips without pooling": lambda: ConvAutoEncoder(3, 3, [4, 6], pooling="none", skips=True),
}  # fmt: skip


def strong(network):
    """The network in eval mode with large random weights: a seam would show."""
    torch.manual_seed(0)
    network = network()
    module = network.network if isinstance(network, Colorizer) else network
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    module.eval()
    return network


@pytest.mark.slow
@pytest.mark.parametrize("name", TILED)
def test_tiles_equal_one_whole_run_for_the_new_layers(name, tmp_path):
    network = strong(TILED[name])
    path = smooth_photo(tmp_path / "photo.png", 40, 53)
    many = lambda tiling: {"core": max(2 * tiling.multiple, 8)}  # noqa: E731
    tiled, whole, tiles = tiled_and_whole(network, path, many, finish=lambda x: x)
    assert tiles >= 12 and tiled.min() >= 0
    assert (tiled - whole).abs().max() < 5e-4


def test_a_group_normed_network_runs_whole_or_is_refused(tmp_path):
    """Group norm's statistics span the image: tiles cannot equal one run, so there is one."""
    network = strong(lambda: Colorizer(ConvAutoEncoder(1, 2, [4, 6, 8], norm="group")))
    tiling = conversion_for(network).tiling
    assert tiling.whole and tiling.margin == 0 and tiling.core >= 256
    path = smooth_photo(tmp_path / "photo.png", 40, 53)
    tiled, whole, tiles = tiled_and_whole(network, path, lambda t: {}, finish=lambda x: x)
    assert tiles == 1 and (tiled - whole).abs().max() < 5e-4
    with pytest.raises(AelabError, match=r"normalises over the whole image.* at most 32 pixels"):
        tiled_and_whole(network, path, lambda t: {"core": 32}, finish=lambda x: x)


@pytest.mark.slow
def test_a_run_states_the_chosen_code_and_the_skips_in_its_start_line_and_metrics(
    smoke_overrides, tmp_path, caplog
):
    """++: the settings may or may not be listed in the model node the run composes."""
    settings = ["++model.latent_channels=3", "++model.skips=true", "++model.norm=batch"]
    run_dir = tmp_path / "run"
    cfg = compose_config([*smoke_overrides, "logger=none", "pooling=max", *settings], run_dir)
    with caplog.at_level(logging.INFO, logger="aelab"):
        train(cfg, run_dir)
    model = json.loads((run_dir / "metrics.json").read_text())["model"]
    assert model["latent_shape"] == [3, 8, 8] and model["latent_size"] == 192
    assert not model["has_bottleneck"] and "NO bottleneck" in model["summary"]
    assert (model["skips"], model["norm"], model["latent_channels"]) == (True, "batch", 3)
    (start,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Model: ")]
    assert "latent 3×8×8 = 192 values" in start and "NO bottleneck" in start


def test_the_schema_refuses_a_bad_family_setting_before_torch_loads(tmp_path):
    problems = config_problems(
        compose_config(["++model.norm=layer", "++model.blocks=-1"], tmp_path), SCHEMAS["train"]
    )
    assert [p.split(":")[0] for p in problems] == ["model.norm=layer", "model.blocks=-1"]


FAMILY_KEYS = ("norm", "blocks", "latent_channels", "skips")


def test_a_saved_config_from_before_the_family_rebuilds_the_seed_network():
    network, x = seeded(3, 3)
    saved = {k: v for k, v in network.config().items() if k not in FAMILY_KEYS}
    clone = ConvAutoEncoder.from_config(saved)
    clone.load_state_dict(network.state_dict())
    assert clone.config() == network.config()
    with torch.no_grad():
        assert torch.equal(clone(x), network(x))


def test_stating_the_bin_heads_shape_leaves_batch_norms_statistics_alone():
    from aelab.tasks import ColorizationTask

    task = ColorizationTask(ConvAutoEncoder(1, Q, norm="batch"), loss="ce")
    before = {key: value.clone() for key, value in task.state_dict().items()}
    assert f"{Q} bin logits at 8×8" in task.target_phrase(32)
    assert all(torch.equal(value, before[key]) for key, value in task.state_dict().items())
    assert task.training and task.model.encoder[1].training  # back in the mode it was in


@pytest.mark.slow
def test_the_rate_distortion_study_sweeps_each_network_over_four_code_sizes():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from aelab import CONFIG_DIR
    from aelab.runtime.sweeps import listed_jobs

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        sweep = compose("train", ["experiment=rate_distortion"], return_hydra_config=True)
        jobs = listed_jobs(sweep)
        sizes = {}
        for job in jobs:
            cfg = compose("train", ["experiment=rate_distortion", *job])
            network = instantiate(cfg.model, in_channels=3, out_channels=3)
            channels, height, width = network.latent_shape(32, 32)
            sizes.setdefault(cfg.model.norm, []).append(channels * height * width)
    assert len(jobs) == 8
    assert sizes == {"none": [64, 192, 512, 1024], "batch": [64, 192, 512, 1024]}


def test_the_192_value_experiment_is_the_resnet_preset_at_double_width_under_bf16(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(["experiment=resnet192"], tmp_path)
    network = instantiate(cfg.model, in_channels=3, out_channels=3)
    assert network.latent_shape(32, 32) == (3, 8, 8)
    assert (network.widths, network.blocks, network.norm) == ([32, 64, 128], 1, "batch")
    assert sum(p.numel() for p in network.parameters()) == 1_069_414  # as docs/results.md says
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 19
    plain = compose_config(["experiment=resnet192", "trainer.precision=32-true"], tmp_path)
    assert plain.trainer.precision == "32-true" and plain.model == cfg.model
