"""SAM3DPrompt model server: 3D SAM (3DSAM-adapter) model, engine, HTTP server, training, evaluation, batch."""

__version__ = "0.1.0"
