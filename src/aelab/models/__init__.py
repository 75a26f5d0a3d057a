from aelab.models.autoencoder import ConvAutoEncoder

__all__ = ["ConvAutoEncoder"]
