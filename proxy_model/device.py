"""Device choice: CUDA when present, else CPU."""

from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; any other value is used as given ('cpu', 'cuda:1')."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
