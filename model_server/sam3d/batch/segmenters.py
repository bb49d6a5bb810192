"""Where clicks become masks: the engine in this process, or a running ``sam3d serve``.

Used by ``sam3d batch`` (every case) and ``sam3d segment`` (one image). Both segment an image
the way the Slicer module does: one session per image, one interaction per lesion holding all
its clicks (and its box, if any), a reset before the next lesion (the encoder cache of the
image is kept across lesions).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..client.client import SAM3DClient, SAM3DError
from ..data.io import Volume
from ..engine.predictor import Predictor
from ..engine.session import InvalidBox, Session
from ..model.checkpoint import CheckpointError
from .prompts import Lesion


class SegmenterError(Exception):
    """The backend refused or failed a case; the message is meant for the user."""


class Segmenter(Protocol):
    name: str  # the model's name (a DICOM SEG's algorithm name)
    checkpoint_sha256: str  # the model checkpoint's SHA-256 ("" where a server does not say)
    startup_note: str  # what the run's log says about it once it is ready ("" when nothing)

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        """One boolean kji mask of ``volume``'s shape per lesion."""


class LocalSegmenter:
    """The engine in this process on one loaded model (loaded once per run)."""

    def __init__(self, predictor: Predictor, click_pathway: str = "3d") -> None:
        self.predictor = predictor
        self.name = predictor.name
        self.checkpoint_sha256 = predictor.loaded.sha256
        self.click_pathway = click_pathway  # who answers a lesion's lone first click (Session)
        self.startup_note = self._note("off" if predictor.compilable else "not applicable")

    @classmethod
    def load(cls, spec: str, device: str = "auto", sam_checkpoint: str | None = None,
             click_pathway: str = "3d", compile_encoder: bool = False,
             slice_precision: str = "auto") -> "LocalSegmenter":
        """The model ``spec`` ('default' or a checkpoint path) on ``device``, its encoder compiled
        for this thread's CPU threads when asked and it applies (``Predictor.compilable``; if the
        compile fails, the encoder runs as built and ``startup_note`` says why); SegmenterError
        when the model cannot be loaded."""
        try:
            segmenter = cls(Predictor.load(spec, device=device, sam_checkpoint=sam_checkpoint,
                                           slice_precision=slice_precision), click_pathway)
        except (CheckpointError, ValueError) as error:
            raise SegmenterError(str(error)) from None
        if compile_encoder and segmenter.predictor.compilable:
            seconds, failure = segmenter.predictor.try_compile_encoder()
            segmenter.startup_note = segmenter._note(f"yes ({seconds:.0f} s)" if seconds is not None else
                                                     f"no ({failure}; a C++ compiler such as g++ is needed); "
                                                     "running it uncompiled")
        return segmenter

    def _note(self, compiled: str) -> str:
        """The log's line about this segmenter: whether its encoder is compiled (``compiled``) and,
        where boxes go to the 2D pathway, that pathway's precision."""
        precision = f"; 2D pathway in {self.predictor.slice_precision}" if self.predictor.box_pathway == "2d" else ""
        return f"encoder compiled: {compiled}{precision}"

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        session = Session(self.predictor, volume.array, volume.spacing, click_pathway=self.click_pathway)
        masks = []
        for lesion in lesions:
            try:
                session.interact(volume.ras_to_kji(lesion.points_ras), lesion.labels,
                                 None if lesion.box_ras is None else volume.ras_to_kji(lesion.box_ras))
            except InvalidBox as error:
                raise SegmenterError(f"{lesion.name}: box: {error}") from None
            masks.append(session.mask.copy())
            session.reset()
        return masks


class ServerSegmenter:
    """A running ``sam3d serve``, through the torch-free client (its errors are complete
    user-facing sentences)."""

    def __init__(self, client: SAM3DClient, capabilities: dict) -> None:
        self.client = client
        model = capabilities.get("model", {})
        self.name = str(model.get("name") or "sam3d")
        self.checkpoint_sha256 = str(model.get("sha256") or "")
        # Recorded for --resume: what decides the server's answers, as local_identity records them
        # (a server older than these fields names fewer: "" or "None" stands in their place).
        self.identity = ":".join(str(part) for part in (
            "server", model.get("name"), model.get("variant"), self.checkpoint_sha256[:16],
            str(capabilities.get("device")).split(":")[0], model.get("slice_precision"), model.get("click_pathway")))
        self.startup_note = ""

    @classmethod
    def connect(cls, url: str, api_key: str | None = None, timeout: float = 300.0) -> "ServerSegmenter":
        """A segmenter on the server at ``url`` after checking its capabilities; SegmenterError
        when it cannot be reached or refuses."""
        try:
            client = SAM3DClient(url, api_key=api_key, timeout=timeout)
            return cls(client, client.capabilities())
        except SAM3DError as error:
            raise SegmenterError(str(error)) from None

    def segment(self, volume: Volume, lesions: list[Lesion]) -> list[np.ndarray]:
        try:
            session_id = self.client.create_session(volume.array, volume.spacing)
            try:
                masks = []
                for lesion in lesions:
                    box = None if lesion.box_ras is None else volume.ras_to_kji(lesion.box_ras).tolist()
                    update = self.client.interact(session_id, volume.ras_to_kji(lesion.points_ras).tolist(),
                                                  lesion.labels.tolist(), box)
                    masks.append(update.apply_to(np.zeros(volume.shape, dtype=bool)))
                    self.client.reset(session_id)
            finally:
                self.client.delete_session(session_id)
        except SAM3DError as error:
            raise SegmenterError(str(error)) from error
        return masks
