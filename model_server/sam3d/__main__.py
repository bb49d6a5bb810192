"""`python -m sam3d ...` runs the `sam3d` console script."""

import sys

from sam3d.cli import main

sys.exit(main())
