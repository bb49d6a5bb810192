"""The engine's named options, importable without torch: the command-line parsers offer them
as choices and the engine checks them, from this one list each."""

CORRECTIONS = ("auto", "local", "global", "2d")  # how a correction click changes the mask (Session)
CLICK_PATHWAYS = ("3d", "search", "gated")  # who answers an object's first click (Session)
BOX_PATHWAYS = ("auto", "2d", "3d")  # who answers a box (Predictor)
