"""aelab: convolutional autoencoder experiments on CIFAR-10 with Lightning and Hydra."""

from pathlib import Path

# The configs live beside src/ (an editable install, as `make` does it).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
