"""Image encoder trained from scratch: ResNet-18-style trunk with GroupNorm + spatial-softmax keypoints.

This follows the robomimic visual core that Diffusion Policy's hybrid image policy uses: a ResNet-18
trunk with every BatchNorm replaced by GroupNorm (`obs_encoder_group_norm`; BatchNorm statistics interact
badly with EMA weights and small batches), a 1x1 conv to `num_keypoints` heat maps, a spatial softmax that
returns the expected (x, y) of each heat map, and a linear layer to `feature_dim`. Random crop at train
time, center crop at eval (the module's .train() / .eval() mode decides), as in the official code
(crop 76x76 for 96x96 PushT images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageEncoderConfig:
    """Sizes of the image encoder. Defaults: ResNet-18 widths (64..512), 32 keypoints, 64 features."""

    width: int = 64  # channels of the first stage; stages use width * (1, 2, 4, 8)
    blocks_per_stage: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # ResNet-18
    num_keypoints: int = 32
    feature_dim: int = 64
    crop_shape: list[int] | None = None  # (H, W); e.g. [76, 76] for 96x96 images; None: no crop
    group_size: int = 16  # GroupNorm groups = channels // group_size (robomimic's replacement rule)


IMAGE_ENCODER_PRESETS: dict[str, dict] = {
    "resnet18": {"width": 64, "blocks_per_stage": [2, 2, 2, 2]},
    # CPU preset: a quarter of the width and one block per stage (~0.2 M parameters instead of ~11 M).
    "cpu": {"width": 16, "blocks_per_stage": [1, 1, 1, 1], "group_size": 8},
}


def _gn(channels: int, group_size: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // group_size), channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _gn(c_out, group_size)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _gn(c_out, group_size)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _gn(c_out, group_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """ResNet stem + 4 stages (strides 1, 2, 2, 2), no pooling head: (B, 3, H, W) -> (B, 8w, H/32, W/32)."""

    def __init__(self, width: int = 64, blocks_per_stage: list[int] | None = None, group_size: int = 16):
        super().__init__()
        blocks_per_stage = blocks_per_stage or [2, 2, 2, 2]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            _gn(width, group_size),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, c_in = [], width
        for i, n in enumerate(blocks_per_stage):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in, c_out, 1 if i == 0 else 2, group_size)]
            blocks += [BasicBlock(c_out, c_out, 1, group_size) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints from feature maps: 1x1 conv to K heat maps, softmax over pixels, expected (x, y) in [-1, 1].

    (B, C, H, W) -> (B, 2K), ordered (x_0, y_0, x_1, y_1, ...).
    """

    def __init__(self, in_channels: int, num_keypoints: int, temperature: float = 1.0):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, 1)
        self.temperature = temperature
        self.num_keypoints = num_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = self.keypoints(x)
        b, k, h, w = heat.shape
        attn = torch.softmax(heat.reshape(b, k, h * w) / self.temperature, dim=-1)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype),
            torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype),
            indexing="ij",
        )
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (HW, 2)
        return (attn @ grid).reshape(b, 2 * k)


def crop_images(x: torch.Tensor, crop: tuple[int, int], random: bool, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Crop (N, C, H, W) to `crop`: an independent random window per image, or the center window."""
    n, _, h, w = x.shape
    ch, cw = crop
    if ch > h or cw > w:
        raise ValueError(f"crop {crop} is larger than the images ({h}, {w})")
    if (ch, cw) == (h, w):
        return x
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top:top + ch, left:left + cw]
    tops = torch.randint(0, h - ch + 1, (n,), generator=generator).to(x.device)
    lefts = torch.randint(0, w - cw + 1, (n,), generator=generator).to(x.device)
    rows = (tops[:, None] + torch.arange(ch, device=x.device)[None])  # (N, ch)
    cols = (lefts[:, None] + torch.arange(cw, device=x.device)[None])  # (N, cw)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing gathers every image's own window in one op: (N, ch, cw, C) -> (N, C, ch, cw).
    return x.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ImageEncoder(nn.Module):
    """(N, 3, H, W) float in [0, 1] -> (N, feature_dim). Random crop in train mode, center crop in eval mode.

    Images already at the crop size (e.g. cropped by the dataset) pass through the crop unchanged.
    """

    def __init__(self, cfg: ImageEncoderConfig | None = None):
        super().__init__()
        cfg = cfg or ImageEncoderConfig()
        self.cfg = cfg
        self.trunk = ResNetTrunk(cfg.width, cfg.blocks_per_stage, cfg.group_size)
        self.pool = SpatialSoftmax(self.trunk.out_channels, cfg.num_keypoints)
        self.proj = nn.Linear(2 * cfg.num_keypoints, cfg.feature_dim)
        self.feature_dim = cfg.feature_dim

    def feature_map_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of the trunk's output for (h, w) input images (after the crop, if any)."""
        if self.cfg.crop_shape is not None:
            h, w = min(h, self.cfg.crop_shape[0]), min(w, self.cfg.crop_shape[1])
        n_down = 2 + len(self.cfg.blocks_per_stage) - 1  # stem conv, max pool, stride 2 in stages 2..n
        for _ in range(n_down):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w

    def check_image_size(self, h: int, w: int) -> None:
        """Raise when the feature map would be a single pixel: spatial softmax would then be constant."""
        fh, fw = self.feature_map_size(h, w)
        if fh < 2 or fw < 2:
            raise ValueError(
                f"images of {h}x{w} (crop {self.cfg.crop_shape}) give a {fh}x{fw} feature map after the "
                f"32x downsampling trunk; spatial-softmax keypoints need at least 2x2 (use >= 48 px inputs)"
            )

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.crop_shape is None:
            return x
        return crop_images(x, tuple(self.cfg.crop_shape), random=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"expected float images in [0, 1] (normalize uint8 first), got {x.dtype}")
        return self.proj(self.pool(self.trunk(self.crop(x))))
