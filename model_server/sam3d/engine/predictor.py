"""A loaded model on its device, shared by every session: the only code that runs the network."""

from __future__ import annotations

import enum
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import LoadedModel, load_model
from ..model.sam3d import ImageFeatures
from .choices import BOX_PATHWAYS
from .slice_pathway import (LiteMedSAM2D, SliceEmbeddings, correct_slice_by_slice, resolve_slice_precision,
                            segment_from_click, segment_slice_by_slice)


class IdleStep(enum.Enum):
    """What one step of idle work (``Predictor.prefetch_correction_window``) did."""
    MORE = "more"  # a step done; there may be more to do
    DONE = "done"  # nothing left to do
    BUSY = "busy"  # what it needs (the session, the encoder) is in use: worth trying again once it is free


class _EmbeddingNeeded(Exception):
    """A 2D correction tried on the windows already embedded needs one more (the encoder lane)."""


class _DecodeOnly:
    """LiteMedSAM's 2D model for a correction tried outside the encoder lane: it decodes on
    windows already embedded and refuses to embed one (``_EmbeddingNeeded``). A wrapper per call,
    not a flag on the shared model, which another session may be embedding with meanwhile."""

    def __init__(self, model: LiteMedSAM2D) -> None:
        self.window = model.window
        self.decode = model.decode

    def embed(self, image: np.ndarray) -> torch.Tensor:
        raise _EmbeddingNeeded


def resolve_box_pathway(choice: str, backbone: str) -> str:
    """``choice`` (one of BOX_PATHWAYS) -> "2d" or "3d" for a model with ``backbone``."""
    if choice not in BOX_PATHWAYS:
        raise ValueError(f"unknown box pathway {choice!r}; choose one of {', '.join(BOX_PATHWAYS)}")
    if choice == "auto":
        return "2d" if backbone == "lite_medsam" else "3d"
    return choice


class Predictor:
    """Runs ``Sam3D.encode`` / ``Sam3D.predict`` and counts the calls. Two lanes, one call at a
    time in each: a click's small prompt-encoder + decoder pass never waits behind another
    session's encoder run, and the device holds at most one encoder's activations at once."""

    def __init__(self, loaded: LoadedModel, box_pathway: str = "auto", slice_precision: str = "auto") -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.preset = loaded.preset
        self.name = loaded.name
        self.device = loaded.device
        self.box_pathway = resolve_box_pathway(box_pathway, loaded.config.backbone)
        self.slice_precision = resolve_slice_precision(slice_precision, self.device.type)  # the 2D pathway's TinyViT
        self._slice_model: LiteMedSAM2D | None = None
        self.encoder_runs = 0
        self.decoder_runs = 0
        self._encode_lock = threading.Lock()
        self._decode_lock = threading.Lock()

    @classmethod
    def load(cls, spec: str | Path = "default", device: str = "auto",
             sam_checkpoint: str | Path | None = None, box_pathway: str = "auto",
             slice_precision: str = "auto") -> "Predictor":
        """``load_model`` (``spec`` a bundled model's name or a checkpoint path) wrapped in a Predictor."""
        return cls(load_model(spec, device=device, sam_checkpoint=sam_checkpoint), box_pathway, slice_precision)

    @property
    def answers_boxes(self) -> bool:
        """Whether box prompts can be given: the 3D model knows boxes, or the 2D pathway answers them."""
        return self.config.box_prompt or self.box_pathway == "2d"

    @property
    def crop_size(self) -> int:
        return self.config.crop_size

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """Normalised crop [1, 1, S, S, S] -> image features kept on the device."""
        with self._encode_lock, torch.inference_mode():
            features = self.model.encode(image.to(self.device))
            self.encoder_runs += 1
        return features

    @property
    def encodes_in_part(self) -> bool:
        """Whether a crop may be encoded some of its slices at a time (``encode_slabs``): a lite
        model whose adapters all sit on top of its frozen TinyViT, which encodes slice by slice."""
        return self.model.has_frozen_backbone

    @property
    def slab_voxels(self) -> int:
        """Crop voxels (along k) averaged into one slice the encoder encodes (``encodes_in_part`` models)."""
        return self.model.image_encoder.slab

    @property
    def slabs_per_run(self) -> int:
        """Slices TinyViT encodes per call (``encodes_in_part`` models): ``encode_slabs`` is
        quickest given whole runs of them."""
        return self.model.image_encoder.slices_per_run

    def encode_slabs(self, image: torch.Tensor, slabs, wait: bool = True) -> torch.Tensor | None:
        """TinyViT's features [1, C, len(slabs), g, g] of the crop's encoded slices of these
        indices (``encodes_in_part`` models) - the first, costly part of ``encode``. ``wait=False``
        (idle work): None at once where the encoder lane is in use."""
        if not self._encode_lock.acquire(blocking=wait):
            return None
        try:
            with torch.inference_mode():
                features = self.model.backbone_features(image.to(self.device), slabs)
            self.encoder_runs += 1
            return features
        finally:
            self._encode_lock.release()

    def encode_from_slabs(self, backbone: torch.Tensor, image: torch.Tensor, wait: bool = True) -> ImageFeatures | None:
        """``encode``'s rest from TinyViT's features of every slice of the crop [1, C, D, g, g]
        (``wait`` as for ``encode_slabs``)."""
        if not self._encode_lock.acquire(blocking=wait):
            return None
        try:
            with torch.inference_mode():
                return self.model.encode_from_backbone(backbone, image.to(self.device))
        finally:
            self._encode_lock.release()

    def predict(self, features: ImageFeatures, points_crop: np.ndarray, labels: np.ndarray,
                mask_logit: torch.Tensor | None) -> torch.Tensor:
        """Foreground probability [S, S, S] (on the CPU) for crop-kji points with labels
        1 / 0 (an empty point list is sent as one padding point, label -1)."""
        points = np.asarray(points_crop, dtype=np.float32).reshape(-1, 3)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(points) == 0:
            points, labels = np.zeros((1, 3), np.float32), np.full(1, -1, np.int64)
        with self._decode_lock, torch.inference_mode():
            logits = self.model.predict(
                features,
                torch.from_numpy(points)[None].to(self.device),
                torch.from_numpy(labels)[None].to(self.device),
                None if mask_logit is None else mask_logit.to(self.device),
            )
            probability = torch.softmax(logits.float(), dim=1)[0, 1].cpu()
            self.decoder_runs += 1
        return probability

    def segment_box_2d(self, volume: np.ndarray, box_kji: np.ndarray, bounds: tuple[float, float],
                       embeddings: SliceEmbeddings | None = None) -> np.ndarray:
        """A box prompt through LiteMedSAM's 2D pathway -> bool mask of ``volume``'s shape (the
        2D model is built on first use, on the model's device; it runs in the encoder lane). ``embeddings``
        (all three 2D calls): the session's slice windows, kept across its interactions."""
        with self._encode_lock, torch.inference_mode():
            mask = segment_slice_by_slice(self._slice_pathway(), volume, box_kji=box_kji, bounds=bounds,
                                          embeddings=embeddings)
            self.encoder_runs += 1
        return mask

    def segment_click_2d(self, volume: np.ndarray, point_kji: np.ndarray, spacing, bounds: tuple[float, float],
                         proposal: np.ndarray | None = None, max_voxels: int | None = None,
                         embeddings: SliceEmbeddings | None = None) -> np.ndarray:
        """A first click through LiteMedSAM's 2D pathway by a box search on its slice
        (``slice_pathway.segment_from_click``; ``proposal``: the 3D model's mask on that slice;
        empty past ``max_voxels``)."""
        with self._encode_lock, torch.inference_mode():
            mask = segment_from_click(self._slice_pathway(), volume, point_kji, spacing, bounds, proposal, max_voxels,
                                      embeddings)
            self.encoder_runs += 1
        return mask

    def correct_box_2d(self, volume: np.ndarray, mask: np.ndarray, point_kji: np.ndarray, label: int,
                       bounds: tuple[float, float], box_kji: np.ndarray | None = None,
                       spacing=None, positives_kji: np.ndarray | None = None,
                       embeddings: SliceEmbeddings | None = None) -> np.ndarray | None:
        """A correction click on a 2D-pathway mask through the 2D pathway: the new mask, or None
        when the click is not one it answers (``slice_pathway.correct_slice_by_slice``). Where the
        session's kept windows (or those embedded ahead) hold every window it decodes on, it runs
        in the decoder lane and never waits behind another session's encoder run; else again,
        from the start, in the encoder lane. The mask is the same either way: a window is chosen
        by the same rule whether it is embedded then or was before."""
        arguments = (volume, mask, point_kji, label, bounds, box_kji, spacing, positives_kji, embeddings)
        if embeddings is not None and self._slice_model is not None:
            with self._decode_lock, torch.inference_mode():
                try:
                    corrected = correct_slice_by_slice(_DecodeOnly(self._slice_model), *arguments)
                except _EmbeddingNeeded:
                    pass
                else:
                    self.encoder_runs += corrected is not None
                    return corrected
        with self._encode_lock, torch.inference_mode():
            corrected = correct_slice_by_slice(self._slice_pathway(), *arguments)
            self.encoder_runs += corrected is not None
        return corrected

    def prefetch_correction_window(self, volume: np.ndarray, mask: np.ndarray, bounds: tuple[float, float],
                                   embeddings: SliceEmbeddings) -> IdleStep:
        """Embed one more window a 2D correction of ``mask`` would decode on
        (``SliceEmbeddings.prefetch``): MORE when one was, DONE when none is left, BUSY when the
        encoder lane is in use (idle work never waits for it)."""
        if not self._encode_lock.acquire(blocking=False):
            return IdleStep.BUSY
        try:
            with torch.inference_mode():
                embedded = embeddings.prefetch(self._slice_pathway(), volume, mask, bounds)
            return IdleStep.MORE if embedded else IdleStep.DONE
        finally:
            self._encode_lock.release()

    def _slice_pathway(self) -> LiteMedSAM2D:
        """LiteMedSAM's 2D model on the 3D model's device, built on first use (call with the
        encoder lane held)."""
        if self._slice_model is None:
            self._slice_model = LiteMedSAM2D(precision=self.slice_precision, device=self.device)
        return self._slice_model

    @property
    def compilable(self) -> bool:
        """Whether ``compile_encoder`` applies: a lite model (frozen TinyViT) on the CPU (on a GPU
        the compiled encoder was never measured)."""
        return self.model.config.backbone == "lite_medsam" and self.device.type == "cpu"

    def compile_encoder(self) -> float:
        """Compile the frozen TinyViT (``LiteImageEncoder3D.compile_backbone``; call on the thread
        that runs encodes, with its thread count set); seconds taken. Raises ValueError where
        not ``compilable``, else what the compile raises."""
        if not self.compilable:
            raise ValueError(f"only a lite model's encoder on the CPU is compiled, not {self.name} on {self.device}")
        start = time.perf_counter()
        with self._encode_lock:
            self.model.image_encoder.compile_backbone()
        return time.perf_counter() - start

    def try_compile_encoder(self) -> tuple[float | None, str]:
        """``compile_encoder`` that never raises: (seconds, "") or (None, the failure in one line).
        Compiling is a speed-up: a caller that gets None runs the encoder as built."""
        try:
            return self.compile_encoder(), ""
        except Exception as error:  # noqa: BLE001 - any failure (not compilable, no compiler, inductor error)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return None, f"{type(error).__name__}: {first_line[:300]}"

    def warm_up(self) -> float:
        """One encode and one predict on a blank crop (allocations, kernels); returns seconds."""
        start = time.perf_counter()
        blank = torch.zeros((1, 1) + (self.crop_size,) * 3)
        centre = np.full((1, 3), (self.crop_size - 1) / 2)
        self.predict(self.encode(blank), centre, np.ones(1), None)
        return time.perf_counter() - start
