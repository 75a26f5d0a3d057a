"""A custom network for aelab, as docs/custom_network.md shows it: any nn.Module whose constructor
takes in_channels and out_channels. encode() is optional: with it the code size is measured."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1),  # 32×32 → 16×16
            nn.ReLU(),
            nn.Conv2d(width, 4, 1),  # the code: 4 channels at half the side
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4, width, 4, stride=2, padding=1),  # 16×16 → 32×32
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=1),  # logits: losses apply the sigmoid
        )

    size_multiple = 2  # image sides must be even to come back at their size

    def encode(self, x):
        return self.encoder(x)

    def forward(self, x):
        return self.decoder(self.encoder(x))
