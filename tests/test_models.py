import math
import re

import pytest
import torch
from torch import nn

from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder

PRESETS = {"assignment": [8, 12, 16], "wide": [32, 48, 64], "deep": [8, 12, 16, 32]}


def test_defaults_build_the_assignment_network_exactly():
    model = ConvAutoEncoder()
    layers = [*model.encoder, *model.decoder]
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU",
        "Upsample", "Conv2d", "ReLU", "Upsample", "Conv2d",
    ]  # fmt: skip
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size) for c in layers if isinstance(c, nn.Conv2d)
    ]
    assert convs == [
        (3, 8, (3, 3)),
        (8, 12, (3, 3)),
        (12, 16, (3, 3)),
        (16, 12, (3, 3)),
        (12, 3, (3, 3)),
    ]
    assert model.latent_shape(32, 32) == (16, 8, 8)
    assert math.prod(model.latent_shape(32, 32)) == 1024


@pytest.mark.parametrize("pooling", ["max", "avg", "none"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_latent_shape_formula_matches_a_forward_pass(pooling, preset):
    model = ConvAutoEncoder(widths=PRESETS[preset], pooling=pooling)
    x = torch.rand(2, 3, 32, 32)
    latent = model.encode(x)
    assert tuple(latent.shape[1:]) == model.latent_shape(32, 32)
    assert model(x).shape == x.shape


def test_pooling_none_has_no_bottleneck_and_no_resampling():
    model = ConvAutoEncoder(pooling="none")
    assert model.latent_shape(32, 32) == (16, 32, 32)
    assert not any(
        isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Upsample)) for m in model.modules()
    )


def test_avg_pooling_and_kernel_size_five():
    model = ConvAutoEncoder(pooling="avg", kernel_size=5, in_channels=1, out_channels=2)
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_config_rebuilds_the_same_architecture():
    model = ConvAutoEncoder(widths=[4, 6], pooling="avg", kernel_size=5)
    clone = ConvAutoEncoder(**model.config())
    clone.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": []}, "model.widths"),
        ({"widths": [8, 0]}, "model.widths"),
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": -1}, "odd"),
        ({"pooling": "median"}, "model.pooling"),
    ],
)
def test_invalid_architecture_is_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(AelabError, match=message):
        ConvAutoEncoder(**kwargs)


@pytest.mark.parametrize("pooling", ["max", "none"])
def test_colorization_is_not_told_it_can_copy_its_input(pooling):
    from aelab.models.autoencoder import bottleneck

    colorizer = ConvAutoEncoder(in_channels=1, out_channels=2, pooling=pooling)
    facts = bottleneck(colorizer, 32)
    assert facts["input_size"] == 1024
    assert facts["latent_size"] == {"max": 1024, "none": 16384}[pooling]
    assert "copy its input" not in facts["summary"] and "NO bottleneck" not in facts["summary"]
    assert "1×32×32 = 1,024-value input" in facts["summary"]
    assert "2×32×32 = 2,048-value target is not the input" in facts["summary"]
    # Told explicitly, a task whose target is its input still gets the warning.
    assert (
        "can learn to copy its input" in bottleneck(colorizer, 32, input_is_target=True)["summary"]
    )
    reconstructor = ConvAutoEncoder(pooling=pooling)
    copies = "can learn to copy its input" in bottleneck(reconstructor, 32)["summary"]
    assert copies is (pooling == "none")


class WritesAFile:
    """Unpickling this would create a file: the code a hostile checkpoint could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_refused_checkpoint_is_explained_without_torchs_advice_to_disable_the_safety(tmp_path):
    from aelab.models.checkpoint import read_checkpoint

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"aelab": {"model": {}}, "payload": WritesAFile(str(marker))}, hostile)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    said = {}
    for path in (hostile, truncated):
        with pytest.raises(AelabError) as refused:
            read_checkpoint(path)
        said[path.stem] = str(refused.value)
    assert not marker.exists()
    for message in said.values():
        assert "weights_only" not in message and "still be loaded" not in message
        assert "\x1b" not in message and "\n" not in message
    assert said["hostile"].startswith(f"{hostile} could not be loaded as a checkpoint")
    assert re.search(r"Python objects \((io|builtins)\.open\)", said["hostile"])
    assert "refuses" in said["hostile"]
    assert f"{truncated} could not be loaded as a checkpoint (RuntimeError: " in said["truncated"]
    assert "corrupt or not a checkpoint" in said["truncated"]
