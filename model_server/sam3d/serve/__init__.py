"""HTTP API v1 (docs/PROTOCOL.md): ``app.create_app``, sessions, wire formats, ``sam3d serve``."""
