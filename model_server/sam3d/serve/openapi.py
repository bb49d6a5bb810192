"""The API's OpenAPI schema, exported to docs/openapi.json: ``python -m sam3d.serve.openapi [PATH]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .app import create_app

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def openapi_text() -> str:
    """The schema as the exported file holds it (sorted keys, trailing newline)."""
    return json.dumps(create_app(None).openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else DEFAULT_PATH
    path.write_text(openapi_text(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
