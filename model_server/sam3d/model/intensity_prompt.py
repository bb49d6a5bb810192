"""The intensity prompt: how like the positively clicked voxels each voxel of the crop is.

The frozen 2D encoder sees the crop in the intensity window of the whole crop, where a lesion
a few noise levels off its organ is a hundredth of the range (docs/BENCHMARKS.md, "Why the
unseen-design phantoms' first click stays low"). The intensity prompt restates the crop relative
to the clicks: the crop smoothed by a 3^3 mean, over a robust estimate of its noise, minus the
positive clicks' median level there. Its channels are Gaussian similarities at three widths and a
signed, saturated difference, so a faint lesion and a bright one give the same prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import POSITIVE_CLICK
from .prompt_encoder import sample_at_points

# Widths of the similarity channels, in units of the smoothed crop's noise estimate.
SIMILARITY_WIDTHS = (2.0, 4.0, 8.0)
SIGNED_SCALE = 4.0  # noise units at which the signed channel reaches tanh(1)
CHANNELS = len(SIMILARITY_WIDTHS) + 1
# The noise estimate's floor, in the model input's units ([0, 1] over the crop's window), for a
# crop without noise (a drawn phantom, a denoised scan); a CT phantom's smoothed noise is 1e-3.
MIN_NOISE = 1e-4


def noise_normalised(image: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S, S] crop -> its 3^3 mean over that mean's noise, read from its differences
    between neighbours along the last axis: their median absolute value x 1.4826 / sqrt 2 is a
    robust spread, and x sqrt 3 turns it into the mean's own for white noise (neighbouring
    means share two thirds of their voxels)."""
    smoothed = F.avg_pool3d(image.float(), kernel_size=3, stride=1, padding=1, count_include_pad=False)
    differences = (smoothed[..., 1:] - smoothed[..., :-1]).abs().flatten(1)
    noise = (differences.median(dim=1).values * 1.4826 * (3 / 2) ** 0.5).clamp(min=MIN_NOISE)
    return smoothed / noise.view(-1, 1, 1, 1, 1)


def intensity_prompt_channels(normalised: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, CHANNELS, S, S, S] from ``noise_normalised``'s output and crop-voxel points [B, N, 3]
    (kji) with labels [B, N]. Rows without a positive click get zeros."""
    levels = sample_at_points(normalised, points, normalised.shape[-1])[..., 0]  # [B, N]
    positive = labels == POSITIVE_CLICK
    masked = torch.where(positive, levels, torch.full_like(levels, float("nan")))
    level = masked.nanmedian(dim=1).values  # NaN where a row has no positive click
    has_level = ~torch.isnan(level)
    difference = normalised - torch.where(has_level, level, torch.zeros_like(level)).view(-1, 1, 1, 1, 1)
    channels = [torch.exp(-0.5 * (difference / width) ** 2) for width in SIMILARITY_WIDTHS]
    channels.append(torch.tanh(difference / SIGNED_SCALE))
    stacked = torch.cat(channels, dim=1)
    return stacked * has_level.view(-1, 1, 1, 1, 1).to(stacked.dtype)
