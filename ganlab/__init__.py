"""ganlab: config-driven GAN and CNN-interpretability experiments for medical imaging."""

__version__ = "0.1.0"
