"""The 2D baseline: LiteMedSAM slice by slice, at the same prompt as the 3D model.

On the prompt's slice LiteMedSAM segments from the prompt (a 2D box, or one click); the mask is
then carried to the neighbouring slices, each prompted with the previous slice's mask box plus
``BOX_MARGIN_PX``, until a slice comes back empty or larger than ``GROWTH_LIMIT`` times the
previous one - the usual way a 2D SAM is stretched to a volume (MedSAM's own 3D inference does
the same). The growth rule stands in for "the object ended": from the object's largest slice its
area shrinks, while LiteMedSAM, given a box, finds *something* in every slice. Each slice goes in as a square window around
the box, resized to ``WINDOW_PX`` (LiteMedSAM's weights keep their box accuracy from 64 to 192 px
inputs), intensities scaled by the volume's 0.5 / 99.5 percentiles.

SAM's own ``PromptEncoder`` / ``MaskDecoder`` (segment_anything) are built for that window and
loaded with LiteMedSAM's weights from the installed package (hash-checked), with our TinyViT.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.intensity import PRESETS
from ..model.lite_encoder import BACKBONE_STRIDE, build_tiny_vit, load_lite_medsam_state, tiny_vit_features

WINDOW_PX = 128
BOX_MARGIN_PX = 5
MIN_AREA_PX = 4  # a slice mask smaller than this ends the propagation
GROWTH_LIMIT = 1.1  # a slice mask larger than this times the previous one ends it too
NAME = "litemedsam_2d"


class LiteMedSAM2D:
    """LiteMedSAM on one square window at a time: box or point prompt -> 2D mask."""

    def __init__(self, window: int = WINDOW_PX) -> None:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        state = load_lite_medsam_state()
        self.window = window
        grid = window // BACKBONE_STRIDE
        self.encoder = build_tiny_vit(window)
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                            input_image_size=(window, window), mask_in_chans=16)
        self.decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
            iou_head_depth=3, iou_head_hidden_dim=256)
        for prefix, module in (("image_encoder.", self.encoder), ("prompt_encoder.", self.prompt_encoder),
                               ("mask_decoder.", self.decoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            module.eval()  # after loading (TinyViT caches its attention biases in eval mode)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, box: np.ndarray | None = None, point: np.ndarray | None = None) -> np.ndarray:
        """[window, window] image in [0, 1], a box (x0, y0, x1, y1) or a point (x, y) in window
        pixels -> bool mask of the window."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].expand(1, 3, -1, -1)
        embedding = tiny_vit_features(self.encoder, tensor)
        boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32).view(1, 1, 4)
        points = None if point is None else (torch.as_tensor(point, dtype=torch.float32).view(1, 1, 2),
                                             torch.ones(1, 1, dtype=torch.int64))
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, _ = self.decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)
        return (F.interpolate(logits, size=(self.window, self.window), mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def _window(slice_box: np.ndarray, shape: Sequence[int]) -> tuple[int, int, int]:
    """Square window (j0, i0, side) around a (j0, i0, j1, i1) box: twice its size, at least 32 px."""
    centre = (slice_box[:2] + slice_box[2:]) / 2
    side = int(max(32, 2 * max(slice_box[2] - slice_box[0], slice_box[3] - slice_box[1]) + 2 * BOX_MARGIN_PX))
    j0, i0 = (int(round(c - side / 2)) for c in centre)
    return j0, i0, side


def _cut(plane: np.ndarray, j0: int, i0: int, side: int, size: int) -> np.ndarray:
    """The window of a slice (edge-replicated outside it), resized to size x size."""
    padded = np.pad(plane, side, mode="edge")
    window = padded[j0 + side:j0 + 2 * side, i0 + side:i0 + 2 * side]
    tensor = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _paste(mask: np.ndarray, j0: int, i0: int, side: int, shape: Sequence[int]) -> np.ndarray:
    """A window mask back onto the slice grid (nearest)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    full = F.interpolate(tensor, size=(side, side), mode="nearest")[0, 0].numpy() > 0.5
    out = np.zeros(shape, dtype=bool)
    jl, il = max(j0, 0), max(i0, 0)
    jh, ih = min(j0 + side, shape[0]), min(i0 + side, shape[1])
    if jh > jl and ih > il:
        out[jl:jh, il:ih] = full[jl - j0:jh - j0, il - i0:ih - i0]
    return out


def segment_slice_by_slice(model: LiteMedSAM2D, volume: np.ndarray, box_kji: np.ndarray | None = None,
                           click_kji: Sequence[float] | None = None) -> np.ndarray:
    """3D bool mask from a 2D box [[k, j0, i0], [k, j1, i1]] or one click, propagated along k."""
    normalised = PRESETS["percentile"].apply(volume)
    mask = np.zeros(volume.shape, dtype=bool)
    if box_kji is not None:
        corners = np.asarray(box_kji, dtype=float)
        start = int(round(corners[:, 0].mean()))
        first_box = np.array([corners[:, 1].min(), corners[:, 2].min(), corners[:, 1].max(), corners[:, 2].max()])
    else:
        start = int(round(click_kji[0]))
        first_box = np.array([click_kji[1] - 8, click_kji[2] - 8, click_kji[1] + 8, click_kji[2] + 8])
    j0, i0, side = _window(first_box, volume.shape[1:])
    scale = model.window / side
    image = _cut(normalised[start], j0, i0, side, model.window)
    if box_kji is not None:
        prompt = dict(box=np.array([first_box[1] - i0, first_box[0] - j0, first_box[3] - i0, first_box[2] - j0]) * scale)
    else:
        prompt = dict(point=np.array([click_kji[2] - i0, click_kji[1] - j0]) * scale)
    mask[start] = _paste(model.segment(image, **prompt), j0, i0, side, volume.shape[1:])
    for direction in (-1, 1):
        previous = mask[start]
        k = start + direction
        while 0 <= k < volume.shape[0] and previous.sum() >= MIN_AREA_PX:
            js, is_ = np.nonzero(previous)
            box = np.array([js.min() - BOX_MARGIN_PX, is_.min() - BOX_MARGIN_PX,
                            js.max() + BOX_MARGIN_PX, is_.max() + BOX_MARGIN_PX], dtype=float)
            j0, i0, side = _window(box, volume.shape[1:])
            scale = model.window / side
            window_box = np.array([box[1] - i0, box[0] - j0, box[3] - i0, box[2] - j0]) * scale
            current = _paste(model.segment(_cut(normalised[k], j0, i0, side, model.window), box=window_box),
                             j0, i0, side, volume.shape[1:])
            if current.sum() < MIN_AREA_PX or current.sum() > GROWTH_LIMIT * previous.sum():
                break
            mask[k] = current
            previous, k = current, k + direction
    return mask
