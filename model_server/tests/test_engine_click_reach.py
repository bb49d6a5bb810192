"""How far a correction click's answer may reach (``engine.click_reach``): negative clicks alone
remove no deeper than themselves, positive clicks alone add no farther than twice themselves."""

from __future__ import annotations

import numpy as np

from sam3d.engine.click_reach import MIN_REACH_MM, added_no_farther_than_clicks, removed_no_deeper_than_clicks

SPACING = (2.0, 1.0, 1.0)
BOX = ((2, 5, 5), (18, 35, 35))  # the answers' region: the ball and a margin
NEGATIVE, POSITIVE = np.array([0]), np.array([1])


def _ball(radius_mm: float = 10.0) -> np.ndarray:
    """A volume-sized mask: a ball centred at kji (10, 20, 20), 2 mm slices, 1 mm pixels."""
    k, j, i = np.ogrid[:20, :40, :40]
    return ((k - 10) * 2.0) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= radius_mm ** 2


def _in_box(volume: np.ndarray) -> np.ndarray:
    return volume[tuple(slice(a, b) for a, b in zip(*BOX))].copy()


def _half_taken(mask: np.ndarray) -> np.ndarray:
    """An answer that took the ball's half at i >= 20."""
    answer = _in_box(mask)
    answer[:, :, 15:] = False
    return answer


def _removed(mask: np.ndarray, result: np.ndarray) -> np.ndarray:
    return _in_box(mask) & ~result


def _click(k: float, j: float, i: float) -> np.ndarray:
    return np.array([[k, j, i]])


def test_a_negative_click_on_the_rim_takes_only_as_deep_as_itself():
    mask = _ball()
    answer = _half_taken(mask)
    # the click on the rim, at i = 29: 1.4 mm inside the ball
    result = removed_no_deeper_than_clicks(mask, BOX, answer, _click(10, 20, 29), NEGATIVE, SPACING)
    removed = _removed(mask, result)
    assert 0 < removed.sum() < _removed(mask, answer).sum() / 2
    assert removed[8, 15, 24] and not removed[8, 15, 20]  # the rim goes, the ball's core stays
    assert not (result & ~_in_box(mask)).any()


def test_a_negative_click_in_the_middle_of_what_it_marks_takes_the_whole_answer():
    mask = _ball()
    answer = _half_taken(mask)
    result = removed_no_deeper_than_clicks(mask, BOX, answer, _click(10, 20, 20), NEGATIVE, SPACING)
    np.testing.assert_array_equal(result, answer)


def test_a_deeper_negative_click_may_take_more():
    mask = _ball()
    answer = _half_taken(mask)
    taken = [_removed(mask, removed_no_deeper_than_clicks(mask, BOX, answer, _click(10, 20, i), NEGATIVE,
                                                          SPACING)).sum() for i in (29, 27, 24)]
    assert taken[0] < taken[1] < taken[2] <= _removed(mask, answer).sum()


def test_negative_clicks_alone_add_nothing_and_one_outside_the_mask_removes_nothing():
    mask = _ball()
    grown = _half_taken(mask)
    grown[0, 0, 0] = True  # outside the ball: the answer added it
    deep_click = removed_no_deeper_than_clicks(mask, BOX, grown, _click(10, 20, 20), NEGATIVE, SPACING)
    assert not (deep_click & ~_in_box(mask)).any()
    outside = removed_no_deeper_than_clicks(mask, BOX, grown, _click(1, 1, 1), NEGATIVE, SPACING)
    np.testing.assert_array_equal(outside, _in_box(mask))


def test_a_positive_click_beside_the_mask_adds_only_near_it():
    small, large = _ball(5.0), _ball(13.0)
    answer = _in_box(large)  # the answer took a shell 8 mm thick
    # the click 2 mm outside the small ball: at most 4 mm of the shell comes
    result = added_no_farther_than_clicks(small, BOX, answer, _click(10, 20, 27), POSITIVE, SPACING)
    added = result & ~_in_box(small)
    assert added.any() and added.sum() < (answer & ~_in_box(small)).sum() / 2
    assert added[8, 15, 22] and not added[8, 15, 26]  # kji (10, 20, 27): 2 mm from the small ball; (10, 20, 31): 6 mm
    # the click about the shell's middle, 5 mm out: the whole shell comes
    whole = added_no_farther_than_clicks(small, BOX, answer, _click(10, 20, 30), POSITIVE, SPACING)
    np.testing.assert_array_equal(whole, answer)


def test_positive_clicks_alone_remove_nothing_and_one_inside_the_mask_adds_only_a_rim():
    mask = _ball()
    answer = _half_taken(mask)
    answer[:, 0, :] = True  # far from the ball
    result = added_no_farther_than_clicks(mask, BOX, answer, _click(10, 20, 20), POSITIVE, SPACING)
    assert not (_in_box(mask) & ~result).any()
    added = result & ~_in_box(mask)
    assert not added.any()  # the far row lies 5 mm and more from the ball, past MIN_REACH_MM
    assert MIN_REACH_MM < 5.0
