"""Many cases from saved clicks in one run (`sam3d batch`); the format: docs/BATCH.md.

- ``manifest``: the JSON / CSV manifest -> ``CaseSpec`` per case (``read_manifest``).
- ``prompts``: a case's clicks grouped into ``Lesion``s: inline, from markups files, from the
  connected components of a prior mask.
- ``propagate``: clicks carried onto another scan of the patient by SimpleITK registration.
- ``segmenters``: clicks -> masks with the engine in-process or on a running server.
- ``state``: the output folder, per-case records for ``--resume``, summary.csv.
- ``runner``: ``run_batch``: the driver, and the ``CaseWorker`` that turns one case into a result.
- ``cluster``: the cases on the workers of a Ray cluster (``--ray``; the only module importing Ray).
- ``commands``: the `sam3d batch` command line.
"""
