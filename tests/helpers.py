"""Small networks for conversion tests."""
import torch
import torch.nn.functional as F
from torch import nn


class SkewedSkipNet(nn.Module):
    """A tiny U-shaped net whose concatenated parts have unequal sizes (3 and 5 channels) and
    very different scales (the skip part is ``skip_gain`` times larger)."""

    def __init__(self, skip_gain: float = 8.0, up_relu: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.up = nn.ConvTranspose2d(5, 5, 2, stride=2)
        self.up_act = nn.ReLU() if up_relu else nn.Identity()
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.05
        self.conv1.weight.data *= skip_gain
        self.conv1.bias.data = self.conv1.bias.data.abs() * skip_gain
        self.conv2.weight.data /= skip_gain

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(self.pool(a)))
        u = self.up_act(self.up(b))
        c = self.relu3(self.conv3(torch.cat([a, u], dim=1)))
        return self.head(c)


class ResidualNet(nn.Module):
    """A ResNet basic block (BN, in-place ReLU called twice, identity shortcut) + a strided conv
    downsampling block with a conv shortcut, bilinear upsampling to a reference size, padding."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.short = nn.Conv2d(4, 6, 1, stride=2)
        self.drop = nn.Dropout2d(0.3)
        self.head = nn.Conv2d(10, 3, 3)

    def forward(self, x):
        s = self.relu(self.bn0(self.stem(x)))
        y = self.relu(self.bn1(self.c1(s)))
        y = self.bn2(self.c2(y))
        s = self.relu(y + s)
        d = (self.down(s) + self.short(s)).relu()
        u = F.interpolate(self.drop(d), size=s.shape[-2:], mode="bilinear", align_corners=False)
        z = torch.cat([s, u], dim=1)
        return self.head(F.pad(z, (1, 1, 1, 1), mode="replicate"))


class Relu6Net(nn.Module):
    def __init__(self, cap=True):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU6() if cap else nn.Hardtanh(0.0, 0.5)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        return torch.sigmoid(self.c2(self.act(self.c1(self.bn(x)))))  # lone BN first, sigmoid at the output


def batches(n=4, b=2, c=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, c, size, size, generator=g) for _ in range(n)]


def init_random(net, seed: int = 0, bn_bias: float = 0.0):
    """Deterministic random weights that make every ReLU fire sometimes: He-scaled convolutions with
    small positive biases, BatchNorm with varied statistics (``bn_bias`` shifts its bias)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.05 + 0.05
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1 + bn_bias
    return net.eval()


class TokenBlock(nn.Module):
    """A transformer block on patch tokens (UNETR's ViT in small): patch embedding, position
    embedding, LayerNorm, multi-head self-attention with einsum and softmax, a GELU MLP, residual
    adds, and the tokens folded back to an image."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.up, self.head = nn.ConvTranspose2d(dim, 4, 4, stride=4), nn.Conv2d(4, 2, 1)
        self.heads = heads

    def forward(self, x):
        b = x.shape[0]
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        q, k, v = self.qkv(self.n1(t)).reshape(b, -1, 3, self.heads, 4).permute(2, 0, 3, 1, 4)
        att = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.5
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, 8)
        t = t + self.proj(y)
        t = t + self.fc2(F.gelu(self.fc1(self.n2(t))))
        img = t.transpose(1, 2).reshape(b, 8, 4, 4)
        return self.head(torch.relu(self.up(img)))
