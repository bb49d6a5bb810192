"""Where a batch's clicks become masks: the engine in this process, or a running ``sam3d serve``.

Both segment a case the way the Slicer module does: one session per image, one interaction per
lesion holding all its clicks, a reset before the next lesion (the encoder cache of the image is
kept across lesions).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..data.io import Volume
from ..engine.predictor import Predictor
from ..engine.session import Session
from .prompts import Lesion


class SegmenterError(Exception):
    """The backend refused or failed a case; the message is meant for the user."""


class Segmenter(Protocol):
    name: str  # the model's name (a DICOM SEG's algorithm name)

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        """One boolean kji mask of ``volume``'s shape per lesion."""


class LocalSegmenter:
    """The engine in this process on one loaded model (loaded once per run)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.name = predictor.name

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        session = Session(self.predictor, volume.array, volume.spacing)
        masks = []
        for lesion in lesions:
            session.interact(volume.ras_to_kji(lesion.points_ras), lesion.labels)
            masks.append(session.mask.copy())
            session.reset()
        return masks


class ServerSegmenter:
    """A running ``sam3d serve``, through the Slicer module's torch-free client; ``client_errors``
    is the client's base exception class (its messages are complete user-facing sentences)."""

    def __init__(self, client, capabilities: dict, client_errors: type[Exception]) -> None:
        self.client = client
        self.client_errors = client_errors
        model = capabilities.get("model", {})
        self.identity = f"server:{model.get('name')}:{model.get('variant')}"  # recorded for --resume
        self.name = str(model.get("name") or "sam3d")

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        try:
            session_id = self.client.create_session(volume.array, volume.spacing)
            try:
                masks = []
                for lesion in lesions:
                    update = self.client.interact(session_id, volume.ras_to_kji(lesion.points_ras).tolist(),
                                                  lesion.labels.tolist())
                    masks.append(update.apply_to(np.zeros(volume.shape, dtype=bool)))
                    self.client.reset(session_id)
            finally:
                self.client.delete_session(session_id)
        except self.client_errors as error:
            raise SegmenterError(str(error)) from error
        return masks
