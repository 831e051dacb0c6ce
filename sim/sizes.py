"""Image-size arguments shared by every task: an int (square) or an (H, W) pair."""

from __future__ import annotations

import numpy as np


def parse_image_size(size: int | tuple[int, int] | list[int], name: str = "image_size",
                     min_side: int = 8) -> tuple[int, int]:
    """(H, W) from an int or a pair, with a clear error for anything else."""
    if isinstance(size, int | np.integer):
        h = w = int(size)
    elif isinstance(size, tuple | list) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"{name} must be an int or an (H, W) pair, got {size!r}")
    if h < min_side or w < min_side:
        raise ValueError(f"{name} must be at least {min_side}x{min_side} pixels, got {(h, w)}")
    return h, w
