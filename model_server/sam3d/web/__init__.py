"""`sam3d web`: the launcher of the web app, which lives in its own environment (docs/WEB.md)."""
