"""Model definitions: sjunet's U-Net (:mod:`.unet`, 2-D and 3-D), the Spiking-FCN architecture
(:mod:`.fcn`), nnU-Net's plain network (:mod:`.nnunet`), the zoo probes (:mod:`.zoo_nets`), ANN
checkpoints (:mod:`.checkpoint`; the arguments a checkpoint may give each allowed factory,
checked before any import: :mod:`.arch_kwargs`) and ``--arch`` models (:mod:`.external`); every
model is built with the network switched off (:mod:`.offline`). Tests: ``tests/models/``."""
from sjunet.models.unet import UNet, UNetConfig, build_model

__all__ = ["UNet", "UNetConfig", "build_model"]
