"""ganexp: config-driven GAN experiments on PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
