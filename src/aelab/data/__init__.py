"""ImageDataModule is imported on first use: image_io and color stay free of Lightning's import."""


def __getattr__(name: str):
    if name == "ImageDataModule":
        from aelab.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ImageDataModule"]
