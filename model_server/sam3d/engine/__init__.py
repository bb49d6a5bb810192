"""Click -> mask on a native volume; the one engine used by serve, segment, batch, evaluate and train.

- ``crops``: ``CropGeometry``, ``extract_crop``, ``paste_back``, ``mask_prompt`` (all resampling
  between the native grid and model crops).
- ``predictor``: ``Predictor`` (a loaded model on its device, one call at a time, counters).
- ``session``: ``Session`` (interactive: interact / set_mask / undo / reset, encoder cache,
  multi-crop fusion) and ``segment`` (one shot).
- ``choices``: the named options (corrections, click and box pathways), importable without torch.
- ``commands``: ``sam3d segment``.
"""
