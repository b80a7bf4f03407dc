"""nnU-Net's U-Nets (package ``dynamic_network_architectures``) from plain, JSON-able arguments.

nnU-Net builds ``PlainConvUNet`` / ``ResidualEncoderUNet`` from classes (``conv_op=nn.Conv2d``,
``norm_op=nn.InstanceNorm2d``, ``nonlin=nn.LeakyReLU``), which neither ``--arch-kwargs`` nor a
checkpoint record can hold. These factories take names instead and fill in nnU-Net's defaults
(its ``get_network_from_plans``: InstanceNorm with ``eps=1e-5, affine=True``, LeakyReLU with
``negative_slope=0.01, inplace=True``, ``conv_bias=True``, no dropout, no deep supervision), so

    sjunet train --arch sjunet.models.nnunet:plain_conv_unet --arch-kwargs '{"input_channels": 1, "num_classes": 2}'

trains the network nnU-Net would, and a checkpoint rebuilds it without naming any code.
"""
from __future__ import annotations

from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {
    "instance": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "batch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
}
_NONLIN = {"leakyrelu": nn.LeakyReLU, "relu": nn.ReLU}


def _common(spatial_dims: int, norm: str | None, nonlin: str):
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    if norm is not None and norm not in _NORM:
        raise ValueError(f"norm must be one of {sorted(_NORM)} or null, got {norm!r}")
    if nonlin not in _NONLIN:
        raise ValueError(f"nonlin must be one of {sorted(_NONLIN)}, got {nonlin!r}")
    norm_op = _NORM[norm][spatial_dims] if norm else None
    norm_kwargs = {"eps": 1e-5, "affine": True} if norm else None
    nonlin_kwargs = {"negative_slope": 1e-2, "inplace": True} if nonlin == "leakyrelu" else {"inplace": True}
    return dict(conv_op=_CONV[spatial_dims], norm_op=norm_op, norm_op_kwargs=norm_kwargs, dropout_op=None,
                dropout_op_kwargs=None, nonlin=_NONLIN[nonlin], nonlin_kwargs=nonlin_kwargs)


def _stages(n_stages: int, base: int, max_features: int, spatial_dims: int):
    features = [min(base * 2 ** i, max_features) for i in range(n_stages)]
    strides = [1] + [2] * (n_stages - 1)
    return features, [3] * n_stages, strides


def _build(cls_name: str, input_channels: int, num_classes: int, n_stages: int, base_features: int,
           max_features: int, spatial_dims: int, norm: str | None, nonlin: str, **specific) -> nn.Module:
    from dynamic_network_architectures.architectures import unet

    features, kernels, strides = _stages(n_stages, base_features, max_features, spatial_dims)
    return getattr(unet, cls_name)(input_channels, n_stages, features, kernel_sizes=kernels, strides=strides,
                                   num_classes=num_classes, conv_bias=True, deep_supervision=False,
                                   **specific, **_common(spatial_dims, norm, nonlin))


def plain_conv_unet(input_channels: int = 1, num_classes: int = 2, n_stages: int = 5, base_features: int = 32,
                    max_features: int = 512, spatial_dims: int = 2, norm: str | None = "instance",
                    nonlin: str = "leakyrelu", n_conv_per_stage: int = 2) -> nn.Module:
    """nnU-Net's ``PlainConvUNet`` with its default layers (module docstring)."""
    return _build("PlainConvUNet", input_channels, num_classes, n_stages, base_features, max_features, spatial_dims,
                  norm, nonlin, n_conv_per_stage=n_conv_per_stage, n_conv_per_stage_decoder=n_conv_per_stage)


def anisotropic_plain_conv_unet(input_channels: int = 1, num_classes: int = 2, n_stages: int = 4,
                                base_features: int = 16, max_features: int = 320, norm: str | None = "batch",
                                nonlin: str = "relu", n_conv_per_stage: int = 2) -> nn.Module:
    """A 3-D ``PlainConvUNet`` as nnU-Net plans it for strongly anisotropic volumes (serial-section
    EM: sections far apart, pixels small): the first stage works in-plane only (kernel (1, 3, 3),
    stride (1, 1, 1)), the second pools in-plane only (stride (1, 2, 2)), every later one pools all
    axes (stride (2, 2, 2), kernel 3³). BatchNorm3d + ReLU by default (``norm``, ``nonlin`` as in
    :func:`plain_conv_unet`). Input sides must be multiples of (2^(n_stages-2), 2^(n_stages-1),
    2^(n_stages-1)) (D, H, W): (4, 8, 8) for the default 4 stages."""
    from dynamic_network_architectures.architectures import unet

    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 2:
        raise ValueError(f"n_stages must be an integer >= 2, got {n_stages!r}")
    features = [min(base_features * 2 ** i, max_features) for i in range(n_stages)]
    kernels = [(1, 3, 3)] + [(3, 3, 3)] * (n_stages - 1)
    strides = [(1, 1, 1), (1, 2, 2)] + [(2, 2, 2)] * (n_stages - 2)
    return unet.PlainConvUNet(input_channels, n_stages, features, kernel_sizes=kernels, strides=strides,
                              num_classes=num_classes, conv_bias=True, deep_supervision=False,
                              n_conv_per_stage=n_conv_per_stage, n_conv_per_stage_decoder=n_conv_per_stage,
                              **_common(3, norm, nonlin))


def residual_encoder_unet(input_channels: int = 1, num_classes: int = 2, n_stages: int = 5, base_features: int = 32,
                          max_features: int = 512, spatial_dims: int = 2, norm: str | None = "instance",
                          nonlin: str = "leakyrelu", n_blocks: int = 2) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` (the ResEnc presets) with its default layers."""
    return _build("ResidualEncoderUNet", input_channels, num_classes, n_stages, base_features, max_features,
                  spatial_dims, norm, nonlin, n_blocks_per_stage=n_blocks, n_conv_per_stage_decoder=1)
