"""The engine's named options, importable without torch: the command-line parsers offer them
as choices and the engine checks them, from this one list each."""

CORRECTIONS = ("auto", "local", "global", "2d")  # how a correction click changes the mask (Session)
CLICK_PATHWAYS = ("3d", "search", "gated")  # who answers an object's first click (Session)
# Who answers a box prompt (Predictor): "3d" the 3D model (box corners as prompt points), "2d"
# LiteMedSAM's trained 2D box pathway slice by slice (slice_pathway.py); "auto" = "2d" for models
# built on LiteMedSAM (its weights are then installed), else "3d".
BOX_PATHWAYS = ("auto", "2d", "3d")
