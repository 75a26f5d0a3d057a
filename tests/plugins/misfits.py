"""Custom networks that aelab must describe or refuse: no encode(), an output of the wrong size."""

from torch import nn


class NoCodeNet(nn.Module):
    """Without encode(): its code size is unknown."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class HalvingNet(nn.Module):
    """Its output is half the image's side: no loss can compare it with the target."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class NormNet(nn.Module):
    """A batch norm: a dummy batch run to measure it must leave its running statistics alone."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def encode(self, x):
        return self.norm(x)

    def forward(self, x):
        return self.conv(self.norm(x))
