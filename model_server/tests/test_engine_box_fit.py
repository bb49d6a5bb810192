"""A loose box fitted to the object the 3D model finds at its centre (``box_fit``): fitted
where the box is loose around a nodule in uniform surroundings (a 3D box, or a 2D box on one
slice), kept where it is drawn close, and kept where the answer is only the core of a
ring-enhancing lesion the box was drawn around."""

from __future__ import annotations

import numpy as np
import pytest

from sam3d.engine import box_fit
from sam3d.engine.box_fit import box_centre, fitted_box, object_slices, same_object, within_found_slices
from sam3d.engine.crops import box_slices

SHAPE = (20, 80, 80)


def _ball(radius: float, centre=(10, 40, 40)) -> np.ndarray:
    k, j, i = np.indices(SHAPE)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def _whole(found: np.ndarray):
    return ((0, 0, 0), SHAPE), found


def _noisy(volume: np.ndarray) -> np.ndarray:
    return volume + np.random.default_rng(0).normal(0, 20, SHAPE)


def test_a_box_loose_around_a_nodule_is_fitted_to_it_within_its_margins():
    nodule = _ball(5)
    volume = _noisy(np.where(nodule, 40.0, -800.0))  # a nodule in the lung
    loose = np.array([[3, 25, 25], [17, 55, 55]], dtype=float)
    fitted = fitted_box(loose, *_whole(nodule), volume)
    assert fitted is not None
    margin = np.array([box_fit.FIT_MARGIN_SLICES, box_fit.FIT_MARGIN_PX, box_fit.FIT_MARGIN_PX])
    np.testing.assert_array_equal(fitted, [np.array([5, 35, 35]) - margin, np.array([15, 45, 45]) + margin])
    assert np.all(fitted[0] >= loose[0]) and np.all(fitted[1] <= loose[1])


def test_a_box_drawn_close_around_its_object_keeps_its_own_answer():
    nodule = _ball(5)
    volume = _noisy(np.where(nodule, 40.0, -800.0))
    close = np.array([[5, 34, 34], [15, 46, 46]], dtype=float)
    assert fitted_box(close, *_whole(nodule), volume) is None


def test_a_box_around_a_ring_enhancing_lesion_is_not_fitted_to_its_core():
    """The 3D model's answer at the centre of a ring-enhancing lesion is its core; the box was
    drawn around the whole lesion, so the ring around the answer is the bright rim, not what lies
    at the box's edge."""
    core, lesion = _ball(6), _ball(12)
    volume = _noisy(np.select([core, lesion], [60.0, 250.0], 20.0))
    close_to_lesion = np.array([[0, 27, 27], [19, 53, 53]], dtype=float)
    assert fitted_box(close_to_lesion, *_whole(core), volume) is None
    rim_as_surroundings = _noisy(np.where(core, 60.0, 250.0))  # the same box where the rim reaches its edge
    assert fitted_box(close_to_lesion, *_whole(core), rim_as_surroundings) is not None


def test_a_box_is_not_fitted_to_a_part_that_barely_stands_out_from_its_edge():
    """A lesion against soft tissue of its own intensity: the 3D model's answer is a part of it one
    noise level darker; the ring around that part reads as the box's edge (both soft tissue), but
    the part does not stand out from the edge, so the box drawn around the lesion keeps its own
    answer. The same part four noise levels darker is fitted."""
    part = _ball(5)
    box = np.array([[0, 29, 29], [19, 51, 51]], dtype=float)
    barely = _noisy(np.where(part, 20.0, 40.0))  # lesion and surroundings 40, the part 20: noise 20
    assert box_fit.noise_std(barely) == pytest.approx(20, rel=0.1)
    assert fitted_box(box, *_whole(part), barely) is None
    clearly = _noisy(np.where(part, -40.0, 40.0))  # four noise levels darker
    assert fitted_box(box, *_whole(part), clearly) is not None


def test_an_answer_beside_the_box_centre_fits_nothing():
    """The 3D model keeps the part of its answer nearest the click; where that part does not hold
    the box's centre, it is not what the user boxed."""
    beside = _ball(4, centre=(10, 40, 52))
    volume = _noisy(np.where(beside, 40.0, -800.0))
    box = np.array([[3, 25, 25], [17, 55, 55]], dtype=float)
    assert not beside[tuple(int(v) for v in box_centre(box))]
    assert fitted_box(box, *_whole(beside), volume) is None
    assert fitted_box(box, *_whole(beside | _ball(3)), volume) is not None


def test_an_answer_outside_the_box_fits_nothing():
    elsewhere = _ball(4, centre=(10, 10, 10))
    volume = _noisy(np.where(elsewhere, 40.0, -800.0))
    box = np.array([[3, 30, 30], [17, 70, 70]], dtype=float)
    assert fitted_box(box, *_whole(elsewhere), volume) is None
    np.testing.assert_array_equal(box_centre(box), [10, 50, 50])


def test_an_answer_to_the_fitted_box_is_checked_against_the_object_found():
    nodule = _ball(5)
    box = np.array([[3, 25, 25], [17, 55, 55]], dtype=float)
    assert same_object(*_whole(nodule), box, *_whole(nodule))
    elsewhere = _ball(5, centre=(10, 30, 30))  # the fitted box's answer went to something else
    assert not same_object(*_whole(elsewhere), box, *_whole(nodule))
    region = ((5, 35, 35), (16, 46, 46))  # each mask over its own region only
    assert same_object(region, nodule[box_slices(region)], box, region, nodule[box_slices(region)])
    outside_the_box = _ball(5, centre=(10, 15, 40))  # agreement is read inside the user's box
    assert not same_object(*_whole(nodule | outside_the_box), box, *_whole(outside_the_box))


def test_a_2d_box_loose_around_a_nodule_is_fitted_on_its_slice():
    nodule = _ball(5)
    volume = _noisy(np.where(nodule, 40.0, -800.0))
    loose = np.array([[10, 25, 25], [10, 55, 55]], dtype=float)
    fitted = fitted_box(loose, *_whole(nodule), volume)
    assert fitted is not None
    np.testing.assert_array_equal(fitted, [[10, 35 - box_fit.FIT_MARGIN_PX, 35 - box_fit.FIT_MARGIN_PX],
                                           [10, 45 + box_fit.FIT_MARGIN_PX, 45 + box_fit.FIT_MARGIN_PX]])


def test_a_box_s_object_is_looked_for_on_its_slices_and_as_deep_as_wide_about_a_2d_box():
    assert object_slices(np.array([[3.4, 25, 25], [17.2, 55, 55]]), (2.0, 1.0, 1.0)) == (3, 18)
    # a 2D box 30 x 20 pixels of 0.7 mm (21 mm at most) on slice 10 of 5 mm slices: 10.5 mm either side
    assert object_slices(np.array([[10, 40, 25], [10, 60, 55]]), (5.0, 0.7, 0.7)) == (7, 13)


def test_a_2d_box_s_answer_keeps_the_slices_the_found_object_spans():
    answer_region = ((4, 10, 10), (14, 20, 20))  # slices 4..13 of the volume
    answer = np.zeros((10, 10, 10), dtype=np.float32)
    answer[:, 3:7, 3:7] = 1.0  # runs on over all ten slices
    region = ((3, 0, 0), (23, 30, 30))  # the 3D model's answer: slices 3..22 of the volume
    found = np.zeros((20, 30, 30), dtype=bool)

    def kept_slices(first: int, last: int, read_between=None) -> list[int]:
        """The answer's slices (of the volume) kept for an object on volume slices first..last,
        the 3D model having read the image between native slices ``read_between``."""
        found[:] = False
        found[first - 3:last - 3 + 1, 12:16, 12:16] = True
        kept = within_found_slices(answer_region, answer, region, found, read_between)
        assert kept.dtype == answer.dtype and np.array_equal(kept[kept.any(axis=(1, 2))], answer[kept.any(axis=(1, 2))])
        return (np.flatnonzero(kept.any(axis=(1, 2))) + 4).tolist()

    assert kept_slices(7, 9) == [7, 8, 9]
    assert kept_slices(3, 5) == [4, 5]  # begins before the answer
    assert kept_slices(12, 20) == [12, 13]  # ends after it
    assert kept_slices(3, 20) == list(range(4, 14))  # wider on both sides: the whole answer
    assert kept_slices(15, 20) == [] and kept_slices(3, 3) == []  # wholly after, wholly before
    # read only between slices 5.5 and 9.6 (its crop encoded in part): an end whose next slice it
    # did not see cuts nothing
    assert kept_slices(7, 9, (5.5, 9.6)) == list(range(7, 14))  # slice 10 was not read
    assert kept_slices(8, 8, (6.5, 9.6)) == [8]  # slices 7 and 9 were: both ends hold
    assert kept_slices(7, 8, (5.0, 9.0)) == [7, 8]
    assert kept_slices(7, 9, (6.0, 9.6)) == list(range(7, 14))  # slice 6 read (its edge), slice 10 not
    assert kept_slices(7, 9, (7.0, 12.0)) == list(range(4, 10))  # slice 6 was not read
    assert kept_slices(7, 9, (7.5, 9.5)) == list(range(4, 14))  # neither end was seen
    assert answer.sum() == 160  # the answer itself untouched
    found[:] = False  # nothing found: nothing to keep it to
    assert np.array_equal(within_found_slices(answer_region, answer, region, found), answer)
