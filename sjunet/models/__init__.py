"""Model definitions."""
from sjunet.models.unet import UNet, UNetConfig, build_model

__all__ = ["UNet", "UNetConfig", "build_model"]
