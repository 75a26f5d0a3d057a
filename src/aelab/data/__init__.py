from aelab.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]
