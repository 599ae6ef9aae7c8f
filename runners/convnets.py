"""The image networks CNN, ResNet and ViT, built from the scaled layers of ``gammadb.runners.models``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gammadb.runners.models import Net, ScaledConv2d, ScaledLinear, _normal_


class CNN(Net):
    """The paper's CNN (L = 4): conv3x3(C->N), ReLU, avgpool2, conv3x3(N->2N), ReLU, avgpool2,
    dense(-> 8N), ReLU, readout(8N -> out) with the 1/fan_in multiplier (the authors' ``CNN``)."""

    def __init__(self, image: tuple[int, int, int], width: int, out_dim: int, generator: torch.Generator,
                 conv_scale: str = "channels"):
        super().__init__()
        c, h, w = image
        self.conv1 = ScaledConv2d(c, width, 3, generator, conv_scale=conv_scale)
        self.conv2 = ScaledConv2d(width, 2 * width, 3, generator, conv_scale=conv_scale)
        side_h, side_w = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
        self.dense = ScaledLinear(2 * width * side_h * side_w, 8 * width, generator)
        self.readout = ScaledLinear(8 * width, out_dim, generator, readout=True)

    def features(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.relu(self.dense(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))



class _BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a strided 1x1 conv + BN
    where the shape changes, else the identity (the authors' ``BasicBlock``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, generator: torch.Generator, conv_scale: str):
        super().__init__()
        self.conv1 = ScaledConv2d(c_in, c_out, 3, generator, stride=stride, padding=1, bias=False, conv_scale=conv_scale)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = ScaledConv2d(c_out, c_out, 3, generator, padding=1, bias=False, conv_scale=conv_scale)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                ScaledConv2d(c_in, c_out, 1, generator, stride=stride, bias=False, conv_scale=conv_scale),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(Net):
    """A muP ResNet: stem conv3x3 + BN + ReLU, stages of basic blocks with widths N * (1, 2, 4, 8) (the
    ResNet-18 widths 64..512 scaled by N/64), stride 2 at the first block of every stage after the
    first, then a pool and the 1/fan_in readout.

    ``blocks`` per stage: (2, 2, 2, 2) is the authors' ResNet-18, (3, 4, 6, 3) their ResNet-34; both
    pool with the authors' 4x4 average pool (``pool4``: ``avg_pool2d(x, 4)``, flattened), which on the
    32x32 and 28x28 task images leaves 1x1. gammadb's compact variant (1..4 stages of one block each)
    pools globally (the mean over positions; ``pool4=False``).
    """

    def __init__(self, image: tuple[int, int, int], width: int, blocks: tuple[int, ...], out_dim: int,
                 generator: torch.Generator, conv_scale: str = "channels", *, pool4: bool = True):
        super().__init__()
        widths = [width * m for m in (1, 2, 4, 8)][: len(blocks)]
        self.pool4 = pool4
        self.stem = ScaledConv2d(image[0], widths[0], 3, generator, padding=1, bias=False, conv_scale=conv_scale)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, c_in, side = [], widths[0], image[1]
        for i, (c_out, count) in enumerate(zip(widths, blocks)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(_BasicBlock(c_in, c_out, stride, generator, conv_scale))
                side = (side - 1) // stride + 1  # 3x3 conv, padding 1
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        features = c_in * (side // 4) ** 2 if self.pool4 else c_in
        self.readout = ScaledLinear(features, out_dim, generator, readout=True)

    def features(self, x: Tensor) -> Tensor:
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        if self.pool4:
            return F.avg_pool2d(x, 4).flatten(1)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, generator: torch.Generator):
        super().__init__()
        self.heads = heads
        self.qkv = ScaledLinear(width, 3 * width, generator)
        self.proj = ScaledLinear(width, width, generator)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # muP attention: scores scaled by 1/d_head (not 1/sqrt(d_head)). Written out rather than
        # F.scaled_dot_product_attention, whose fused CPU kernels have no double backward (sharpness).
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1)
        out = weights @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, generator: torch.Generator):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads, generator)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = ScaledLinear(width, 2 * width, generator)
        self.fc2 = ScaledLinear(2 * width, width, generator)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(Net):
    """A small vision transformer: 4x4 patches embedded to width N, learned position embedding,
    ``depth`` pre-LayerNorm blocks (muP 1/d_head attention, MLP ratio 2), mean-pooled tokens,
    1/fan_in readout. Heads: 4 when N is a multiple of 4, else 1."""

    PATCH = 4

    def __init__(self, image: tuple[int, int, int], width: int, depth: int, out_dim: int, generator: torch.Generator):
        super().__init__()
        c, h, w = image
        tokens = (h // self.PATCH) * (w // self.PATCH)
        heads = 4 if width % 4 == 0 else 1
        self.embed = ScaledLinear(c * self.PATCH * self.PATCH, width, generator)
        self.position = nn.Parameter(torch.empty(tokens, width))
        _normal_(self.position, generator)
        self.blocks = nn.Sequential(*(_Block(width, heads, generator) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.readout = ScaledLinear(width, out_dim, generator, readout=True)

    def features(self, x: Tensor) -> Tensor:
        p = self.PATCH
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, tokens, C*p*p)
        z = self.blocks(self.embed(patches) + self.position)
        return self.norm(z).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))
