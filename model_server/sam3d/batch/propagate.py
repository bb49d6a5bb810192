"""Clicks of one scan carried onto another scan of the same patient by image registration.

``register(target, source)`` aligns the source image to the target image with SimpleITK: a rigid
Euler3D transform (centred initialiser, Mattes mutual information), then an affine transform
started from it. Both images are first resampled to ``REGISTRATION_SPACING_MM`` isotropic
voxels, and the metric reads a seeded random sample of them, so a registration takes about a
second on one CPU core and gives the same transform every time, on any machine (it runs on one
ITK thread: sums are then always added in the same order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..data.io import Volume
from ..data.resample import resample_volume

REGISTRATION_SPACING_MM = 2.0
SAMPLING_PERCENTAGE = 0.25
SAMPLING_SEED = 20240601
HISTOGRAM_BINS = 32
RIGID_ITERATIONS = 100
AFFINE_ITERATIONS = 50


@dataclass
class Registration:
    """The affine transform that maps target LPS points to source LPS points (ITK's fixed ->
    moving direction), with the metric after each stage (Mattes MI: lower is better)."""

    transform: sitk.AffineTransform
    rigid_metric: float
    affine_metric: float
    seconds: float

    def source_to_target(self, points_ras: np.ndarray, source: Volume, target: Volume) -> np.ndarray:
        """Map RAS points [N, 3] of the source scan to RAS points of the target scan."""
        inverse = self.transform.GetInverse()
        # RAS <-> LPS through the volumes' own conversions (one convention, in sam3d.data.io)
        source_lps = source.kji_to_lps(source.ras_to_kji(points_ras))
        target_lps = np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in source_lps])
        return target.kji_to_ras(target.lps_to_kji(target_lps))

    def describe(self) -> str:
        matrix = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        return (f"rigid MI {self.rigid_metric:.4f}, affine MI {self.affine_metric:.4f}, "
                f"{self.seconds:.2f} s; affine matrix {np.round(matrix, 4).tolist()}, "
                f"translation {np.round(self.transform.GetTranslation(), 2).tolist()} mm, "
                f"centre {np.round(self.transform.GetCenter(), 2).tolist()} mm")


def register(target: Volume, source: Volume) -> Registration:
    """Register ``source`` (moving) onto ``target`` (fixed): rigid, then affine."""
    start = time.perf_counter()
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the same transform on every machine
    try:
        fixed, moving = _prepared(target), _prepared(source)
        rigid = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY))
        rigid_metric = _optimise(fixed, moving, rigid, RIGID_ITERATIONS)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        affine_metric = _optimise(fixed, moving, affine, AFFINE_ITERATIONS)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return Registration(affine, rigid_metric, affine_metric, time.perf_counter() - start)


def _prepared(volume: Volume) -> sitk.Image:
    """The image as float32 at the registration spacing."""
    as_float = volume.with_array(volume.array.astype(np.float32))
    return resample_volume(as_float, (REGISTRATION_SPACING_MM,) * 3, interpolator="linear").to_sitk()


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, iterations: int) -> float:
    """Optimise ``transform`` in place (two resolution levels); returns the final metric."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_PERCENTAGE, SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=iterations, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())
