"""The API's OpenAPI schema, exported to a file: ``python -m sam3d.serve.openapi docs/openapi.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .app import create_app


def openapi_text() -> str:
    """The schema as the exported file holds it (sorted keys, trailing newline)."""
    return json.dumps(create_app(None).openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sam3d.serve.openapi PATH (the repository keeps it in docs/openapi.json)",
              file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.write_text(openapi_text(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
