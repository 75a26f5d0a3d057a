"""aelab: convolutional autoencoder experiments on CIFAR-10 with Lightning and Hydra."""

from pathlib import Path

from aelab.runtime.console import quiet_library_noise

# The configs live beside src/ (an editable install, as `make` does it).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

quiet_library_noise()  # here: every entry point imports aelab before torch and Lightning
