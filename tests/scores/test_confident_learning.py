"""Tests of dq_plugins.scores.confident_learning on planted label noise and edge cases."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dq_plugins.scores import ConfidentLearningScores, confident_learning
from dq_plugins.scores.confident_learning import FILTER_BY_OPTIONS

pytestmark = pytest.mark.filterwarnings("error")

REPO_ROOT = Path(__file__).resolve().parents[2]


def _planted(
    num_samples: int = 200,
    classes: tuple[int, ...] = (0, 1, 2),
    num_columns: int = 3,
    num_flips: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (labels, pred_probs, true_labels, flipped_indices).

    pred_probs are confident in the true class (0.90 to 0.92, a spread narrower than the drop that
    a few flips cause in Confident Learning's per-class threshold, so every flip is counted); the
    rest of the mass is spread at random over the other columns. Flipped labels move to the next
    present class, so every class both loses and receives flips.
    """
    rng = np.random.default_rng(seed)
    present = np.array(classes)
    true_labels = present[np.arange(num_samples) % present.size]
    self_confidence = 0.90 + 0.02 * rng.random(num_samples)
    rest = rng.dirichlet(np.ones(num_columns - 1), size=num_samples)
    pred_probs = np.empty((num_samples, num_columns))
    for i, true_class in enumerate(true_labels):
        others = [k for k in range(num_columns) if k != true_class]
        pred_probs[i, others] = (1.0 - self_confidence[i]) * rest[i]
        pred_probs[i, true_class] = self_confidence[i]
    flipped = rng.choice(num_samples, size=num_flips, replace=False)
    labels = true_labels.copy()
    position = np.searchsorted(present, true_labels[flipped])
    labels[flipped] = present[(position + 1) % present.size]
    return labels, pred_probs, true_labels, flipped


def _precision_recall(found: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    hits = np.intersect1d(found, planted).size
    return hits / max(found.size, 1), hits / planted.size


def test_planted_flips_are_found_and_corrected() -> None:
    labels, pred_probs, true_labels, flipped = _planted()
    scores = confident_learning(labels, pred_probs)
    assert isinstance(scores, ConfidentLearningScores)

    precision, recall = _precision_recall(np.flatnonzero(scores.is_label_issue), flipped)
    assert precision >= 0.9
    assert recall >= 0.9
    issues = scores.is_label_issue
    np.testing.assert_array_equal(scores.suggested_label[issues], true_labels[issues])
    np.testing.assert_array_equal(scores.suggested_label[~issues], labels[~issues])
    # 10 flipped labels out of 200
    assert abs(scores.noise_rate - 10 / 200) <= 0.03
    assert scores.joint.shape == (3, 3)
    assert scores.joint.sum() == pytest.approx(1.0)
    # flipped rows keep at most 0.1 on their given label, clean rows at least 0.9
    assert scores.label_quality[flipped].max() < 0.1
    assert np.delete(scores.label_quality, flipped).min() >= 0.9


def test_output_dtypes_and_shapes() -> None:
    labels, pred_probs, _, _ = _planted()
    scores = confident_learning(labels.astype(np.int32), pred_probs.astype(np.float32))
    assert scores.is_label_issue.dtype == np.bool_
    assert scores.is_label_issue.shape == (200,)
    assert scores.suggested_label.dtype == np.int64
    assert scores.suggested_label.shape == (200,)
    assert scores.label_quality.dtype == np.float64
    assert scores.label_quality.shape == (200,)
    assert ((scores.label_quality >= 0.0) & (scores.label_quality <= 1.0)).all()
    assert isinstance(scores.noise_rate, float)
    assert scores.joint.dtype == np.float64


@pytest.mark.parametrize("filter_by", FILTER_BY_OPTIONS)
def test_every_filter_by_runs(filter_by: str) -> None:
    labels, pred_probs, _, flipped = _planted()
    scores = confident_learning(labels, pred_probs, filter_by=filter_by)
    precision, recall = _precision_recall(np.flatnonzero(scores.is_label_issue), flipped)
    assert precision >= 0.9
    assert recall >= 0.9


def test_rows_need_not_sum_to_one() -> None:
    labels, pred_probs, _, _ = _planted()
    reference = confident_learning(labels, pred_probs)
    scaled = pred_probs * 3.0  # e.g. unnormalised scores
    scaled[0] = [0.0, -0.5, 0.0]  # zeros and a negative: clipped to epsilon, then renormalised
    scores = confident_learning(labels, scaled)
    np.testing.assert_array_equal(scores.is_label_issue[1:], reference.is_label_issue[1:])
    np.testing.assert_allclose(scores.label_quality[1:], reference.label_quality[1:])
    # row 0 becomes uniform: 1/3 on its given label
    assert scores.label_quality[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("absent", [0, 2, 3])
def test_class_absent_from_labels(absent: int) -> None:
    present = tuple(k for k in range(4) if k != absent)
    labels, pred_probs, true_labels, flipped = _planted(classes=present, num_columns=4)
    assert absent not in labels
    scores = confident_learning(labels, pred_probs)

    precision, recall = _precision_recall(np.flatnonzero(scores.is_label_issue), flipped)
    assert precision >= 0.9
    assert recall >= 0.9
    issues = scores.is_label_issue
    np.testing.assert_array_equal(scores.suggested_label[issues], true_labels[issues])
    assert absent not in scores.suggested_label
    assert scores.joint.shape == (4, 4)
    np.testing.assert_array_equal(scores.joint[absent], 0.0)
    np.testing.assert_array_equal(scores.joint[:, absent], 0.0)
    assert scores.joint.sum() == pytest.approx(1.0)
    assert abs(scores.noise_rate - 10 / 200) <= 0.03


def test_nan_rows_are_left_out() -> None:
    labels, pred_probs, _, flipped = _planted()
    missing = np.array([3, 50, 51, 199, flipped[0]])
    with_nan = pred_probs.copy()
    with_nan[missing] = np.nan
    with_nan[7, 1] = np.nan  # one NaN entry also marks the row as not recorded
    missing = np.append(missing, 7)
    scores = confident_learning(labels, with_nan)

    assert not scores.is_label_issue[missing].any()
    np.testing.assert_array_equal(scores.suggested_label[missing], labels[missing])
    assert np.isnan(scores.label_quality[missing]).all()
    assert not np.isnan(np.delete(scores.label_quality, missing)).any()
    # The recorded rows get what they get without the unrecorded ones.
    kept = np.setdiff1d(np.arange(labels.size), missing)
    subset = confident_learning(labels[kept], pred_probs[kept])
    np.testing.assert_array_equal(scores.is_label_issue[kept], subset.is_label_issue)
    np.testing.assert_array_equal(scores.suggested_label[kept], subset.suggested_label)
    np.testing.assert_allclose(scores.joint, subset.joint)


def test_all_rows_missing() -> None:
    labels = np.array([0, 1, 2, 1])
    scores = confident_learning(labels, np.full((4, 3), np.nan))
    np.testing.assert_array_equal(scores.is_label_issue, [False] * 4)
    np.testing.assert_array_equal(scores.suggested_label, labels)
    assert np.isnan(scores.label_quality).all()
    assert scores.noise_rate == 0.0
    np.testing.assert_array_equal(scores.joint, np.zeros((3, 3)))


def test_single_recorded_row_flags_nothing() -> None:
    labels = np.array([0, 1])
    pred_probs = np.array([[0.1, 0.9], [np.nan, np.nan]])
    scores = confident_learning(labels, pred_probs)
    np.testing.assert_array_equal(scores.is_label_issue, [False, False])
    np.testing.assert_array_equal(scores.suggested_label, [0, 1])
    np.testing.assert_allclose(scores.label_quality, [0.1, np.nan])
    assert scores.noise_rate == 0.0
    # one recorded row, given label 0 -> joint = diag(1, 0)
    np.testing.assert_array_equal(scores.joint, [[1.0, 0.0], [0.0, 0.0]])


def test_single_class_flags_nothing() -> None:
    labels = np.array([1, 1, 1, 1])
    # The model disagrees with most labels, but one given class gives no threshold to compare to.
    pred_probs = np.array(
        [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9], [0.8, 0.1, 0.1]]
    )
    scores = confident_learning(labels, pred_probs)
    assert not scores.is_label_issue.any()
    np.testing.assert_array_equal(scores.suggested_label, labels)
    np.testing.assert_allclose(scores.label_quality, [0.05, 0.9, 0.05, 0.1])
    assert scores.noise_rate == 0.0
    # every recorded label is 1 -> joint = diag(0, 1, 0)
    np.testing.assert_array_equal(scores.joint, np.diag([0.0, 1.0, 0.0]))


def test_labels_of_missing_rows_are_not_checked() -> None:
    labels = np.array([0, 1, -1])
    pred_probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan]])
    with warnings.catch_warnings():
        # cleanlab's own warning (classes of one sample are too small to prune) is let through.
        warnings.filterwarnings("ignore", "May not flag all label issues", UserWarning)
        scores = confident_learning(labels, pred_probs)
    assert scores.suggested_label[2] == -1


def test_rejects_bad_inputs() -> None:
    labels, pred_probs, _, _ = _planted(num_samples=30, num_flips=0)
    with pytest.raises(ValueError, match=r"`filter_by` to be one of \[.*\] but got 'nope'"):
        confident_learning(labels, pred_probs, filter_by="nope")
    with pytest.raises(ValueError, match=r"`labels` to be a 1-D integer array .* dtype float64"):
        confident_learning(labels.astype(np.float64), pred_probs)
    with pytest.raises(ValueError, match=r"`pred_probs` to have shape \(N, C\) with N = .* = 29"):
        confident_learning(labels[:29], pred_probs)
    with pytest.raises(ValueError, match=r"`pred_probs` to have a float dtype but got int64"):
        confident_learning(labels, np.ones((30, 3), dtype=np.int64))
    with_inf = pred_probs.copy()
    with_inf[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"`pred_probs` to be finite in recorded rows"):
        confident_learning(labels, with_inf)
    bad_labels = labels.copy()
    bad_labels[4] = 3
    with pytest.raises(ValueError, match=r"`labels` in 0 \.\. 2 \(pred_probs has 3 .* found 3"):
        confident_learning(bad_labels, pred_probs)


def test_importing_cleanlab_keeps_the_warning_filters() -> None:
    # cleanlab 2.9 runs `warnings.filterwarnings("ignore")` when imported; check in a fresh
    # interpreter (cleanlab is already imported here) that the filters survive the first call.
    code = (
        "import warnings, numpy as np\n"
        "from dq_plugins.scores import confident_learning\n"
        "before = list(warnings.filters)\n"
        "confident_learning(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))\n"
        "assert 'cleanlab' in __import__('sys').modules\n"
        "assert warnings.filters == before, warnings.filters[:3]\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore::UserWarning", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("absent", [None, 3])
def test_row_chunks_match_cleanlab_on_the_whole_float64_matrix(monkeypatch: pytest.MonkeyPatch,
                                                               absent: int | None) -> None:
    """Row chunks of a few rows (float32 softmax handed to cleanlab) give cleanlab's own result on the
    whole float64 matrix: flags, joint, self-confidence; NaN rows and an absent class included."""
    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank

    module = sys.modules["dq_plugins.scores.confident_learning"]

    classes = (0, 1, 2) if absent == 3 else (0, 1, 2, 3)
    labels, pred_probs, _, _ = _planted(num_samples=300, classes=classes, num_columns=4, num_flips=20, seed=3)
    pred_probs[[5, 77]] = np.nan
    monkeypatch.setattr(module, "ROW_CHUNK_ELEMENTS", 4 * 7)  # 7 rows per chunk
    scores = confident_learning(labels, pred_probs.astype(np.float32))
    valid = ~np.isnan(pred_probs).any(axis=1)
    present = np.unique(labels[valid])
    full = np.clip(pred_probs[valid].astype(np.float32).astype(np.float64), 1e-12, None)
    full /= full.sum(axis=1, keepdims=True)
    compact = full[:, present] / full[:, present].sum(axis=1, keepdims=True)
    compact_labels = np.searchsorted(present, labels[valid])
    expected = cleanlab.filter.find_label_issues(compact_labels, compact, filter_by="prune_by_noise_rate", n_jobs=1)
    np.testing.assert_array_equal(scores.is_label_issue[valid], expected)
    assert not scores.is_label_issue[~valid].any() and np.isnan(scores.label_quality[~valid]).all()
    joint = cleanlab.count.estimate_joint(compact_labels, compact)
    np.testing.assert_allclose(scores.joint[np.ix_(present, present)], joint, atol=1e-12)
    quality = cleanlab.rank.get_label_quality_scores(labels[valid], full, method="self_confidence")
    np.testing.assert_allclose(scores.label_quality[valid], quality, atol=1e-7)
    assert expected.any()


def test_nan_rows_in_chunks() -> None:
    from dq_plugins.scores.confident_learning import nan_rows

    values = np.zeros((10_000, 1000), np.float32)
    values[[0, 4_500, 9_999], [3, 999, 0]] = np.nan
    np.testing.assert_array_equal(np.flatnonzero(nan_rows(values)), [0, 4_500, 9_999])
