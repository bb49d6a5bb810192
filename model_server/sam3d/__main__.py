"""`python -m sam3d ...` runs the `sam3d` console script."""

import sys

from .cli import main

sys.exit(main())
