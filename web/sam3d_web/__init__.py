"""SAM3DPrompt's web face: a trame-slicer application driving the Slicer module's PromptLogic.

It runs from a checkout, as the Slicer module does: ``SAM3DPromptLib`` (``SAM3DPrompt/`` next to
this folder) is put on ``sys.path`` here, so the browser and Slicer use the very same logic.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "SAM3DPrompt"

if (MODULE_DIR / "SAM3DPromptLib").is_dir() and str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
