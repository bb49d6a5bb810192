"""The torch-free client of API v1 (numpy, requests), for `sam3d segment --server` and
`sam3d batch --server`: generated copies of the Slicer module's SAM3DPromptLib/client.py and
wire.py (scripts/sync_client.py; docs/DEVELOPING.md says why)."""
