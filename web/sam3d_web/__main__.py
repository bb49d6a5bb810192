"""``python -m sam3d_web``: what ``sam3d web`` runs in the web environment."""

import sys

from .cli import main

sys.exit(main())
