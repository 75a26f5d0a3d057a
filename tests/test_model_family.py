"""The network family (model.norm, blocks, pooling=stride, upsample_mode, latent_channels,
skips): the seed network unchanged, every option building and keeping the image size, the code
size and the bottleneck as they are, tiles equal to one whole run, and the ce head on each."""

from __future__ import annotations

import pytest
import torch

from aelab.models import ConvAutoEncoder
from aelab.tasks.ab_bins import bin_count, classifier_logits

Q = bin_count()

# Recorded from the seed network before the family existed: (in, out) → parameters, state-dict
# keys, and the output's sum, absolute sum and a position-weighted sum on torch.manual_seed(0)
# input (2 images of 32×32) with torch.manual_seed(0) initialisation.
SEED_KEYS = [
    f"{part}.{index}.{kind}"
    for part, index in [("encoder", 0), ("encoder", 3), ("encoder", 6), ("decoder", 1), ("decoder", 4)]
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
