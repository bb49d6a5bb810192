"""A loaded model on its device, shared by every session: the only code that runs the network."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import LoadedModel, load_model
from ..model.sam3d import ImageFeatures


class Predictor:
    """Runs ``Sam3D.encode`` / ``Sam3D.predict`` and counts the calls. Two lanes, one call at a
    time in each: a click's small prompt-encoder + decoder pass never waits behind another
    session's encoder run, and the device holds at most one encoder's activations at once."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.preset = loaded.preset
        self.name = loaded.name
        self.device = loaded.device
        self.encoder_runs = 0
        self.decoder_runs = 0
        self._encode_lock = threading.Lock()
        self._decode_lock = threading.Lock()

    @classmethod
    def load(cls, spec: str | Path = "default", device: str = "auto",
             sam_checkpoint: str | Path | None = None) -> "Predictor":
        """``load_model`` (``spec`` a bundled model's name or a checkpoint path) wrapped in a Predictor."""
        return cls(load_model(spec, device=device, sam_checkpoint=sam_checkpoint))

    @property
    def crop_size(self) -> int:
        return self.config.crop_size

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """Normalised crop [1, 1, S, S, S] -> image features kept on the device."""
        with self._encode_lock, torch.inference_mode():
            features = self.model.encode(image.to(self.device))
            self.encoder_runs += 1
        return features

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

    def warm_up(self) -> float:
        """One encode and one predict on a blank crop (allocations, kernels); returns seconds."""
        start = time.perf_counter()
        blank = torch.zeros((1, 1) + (self.crop_size,) * 3)
        centre = np.full((1, 3), (self.crop_size - 1) / 2)
        self.predict(self.encode(blank), centre, np.ones(1), None)
        return time.perf_counter() - start
