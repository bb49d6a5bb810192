"""Files and voxels: IO with full geometry, intensity presets, phantoms, datasets, click simulation."""
