"""ganlab: config-driven GAN and CNN-interpretability experiments for medical imaging."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """`${ganlab.auto_precision:<accelerator>}` (configs/trainer/default.yaml): the device's mixed precision."""
    from omegaconf import OmegaConf

    def auto_precision(accelerator: str = "auto") -> str:
        from ganlab.callbacks.performance import resolve_precision
        return resolve_precision({"precision": "auto", "accelerator": accelerator})

    if not OmegaConf.has_resolver("ganlab.auto_precision"):
        OmegaConf.register_new_resolver("ganlab.auto_precision", auto_precision)


_register_resolvers()
