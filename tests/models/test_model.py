import pytest
import torch
from torch import fx

from sjunet.models import UNet, UNetConfig, build_model


@pytest.mark.parametrize("depth,bn,up_relu", [(2, False, False), (3, True, True)])
def test_unet_shapes_and_trace(depth, bn, up_relu):
    m = UNet(UNetConfig(in_channels=3, out_channels=5, base_width=4, depth=depth, batch_norm=bn, up_relu=up_relu))
    x = torch.rand(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, 5, 32, 32)
    gm = fx.symbolic_trace(m)
    assert torch.allclose(gm(x), y)
    cats = [n for n in gm.graph.nodes if n.target is torch.cat]
    assert len(cats) == depth
    pools = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), torch.nn.AvgPool2d)]
    assert len(pools) == depth


def test_config_roundtrip_and_validation():
    cfg = UNetConfig(base_width=8, depth=2)
    m = build_model(cfg.to_dict())
    assert m.config == cfg
    with pytest.raises(ValueError):
        UNetConfig(depth=0)
