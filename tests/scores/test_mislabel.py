"""Tests of dq_plugins.scores.mislabel against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dq_plugins.scores.mislabel import mislabel_score, percentile_rank

pytestmark = pytest.mark.filterwarnings("error")

NAN = np.nan


# ------------------------------------------------------------------ percentile_rank
def test_percentile_rank_docstring_case() -> None:
    ranks = percentile_rank(np.array([3.0, 1.0, 2.0, NAN]))
    np.testing.assert_allclose(ranks, [1.0, 0.0, 0.5, NAN])
    assert ranks.dtype == np.float64


def test_percentile_rank_ties_share_their_mean_rank() -> None:
    # 0-based average ranks [0.5, 0.5, 2, 3] over n - 1 = 3
    np.testing.assert_allclose(percentile_rank([1.0, 1.0, 2.0, 5.0]), [0.5 / 3, 0.5 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(percentile_rank([4.0, 4.0, 4.0]), [0.5, 0.5, 0.5])


def test_percentile_rank_single_all_nan_and_empty() -> None:
    np.testing.assert_allclose(percentile_rank([NAN, 7.0]), [NAN, 0.5])
    assert np.isnan(percentile_rank([NAN, NAN])).all()
    assert percentile_rank(np.array([])).shape == (0,)


def test_percentile_rank_accepts_integers_and_infinities() -> None:
    np.testing.assert_allclose(percentile_rank(np.array([2, 0, 1])), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(percentile_rank([np.inf, -np.inf, 0.0]), [1.0, 0.0, 0.5])


# ------------------------------------------------------------------ mislabel_score
def test_hand_computed_mean_of_ranks() -> None:
    score = mislabel_score(
        aum=np.array([2.0, 0.0, -1.0]),  # -aum = [-2, 0, 1] -> ranks [0, 0.5, 1]
        el2n_all_epochs=np.array([0.1, 0.5, 0.9]),  # -> [0, 0.5, 1]
        el2n_early=np.array([0.2, 1.0, 0.6]),  # -> [0, 1, 0.5]
    )
    np.testing.assert_allclose(score, [0.0, 2 / 3, 5 / 6])
    assert score.dtype == np.float64


def test_low_aum_is_suspicious() -> None:
    flat = np.zeros(2)
    score = mislabel_score(aum=np.array([5.0, -5.0]), el2n_all_epochs=flat, el2n_early=flat)
    # -aum ranks [0, 1]; the flat signals tie at 0.5 for both
    np.testing.assert_allclose(score, [(0 + 0.5 + 0.5) / 3, (1 + 0.5 + 0.5) / 3])


def test_nan_drops_a_signal_for_that_sample_only() -> None:
    score = mislabel_score(
        aum=np.array([1.0, NAN, -1.0, NAN]),  # -aum over valid {-1, 1}: s0 -> 0, s2 -> 1
        el2n_all_epochs=np.array([0.2, 0.4, NAN, NAN]),  # s0 -> 0, s1 -> 1
        el2n_early=np.array([NAN, NAN, NAN, NAN]),  # never recorded early
    )
    np.testing.assert_allclose(score, [0.0, 1.0, 1.0, NAN])


def test_scale_free_under_monotone_transforms() -> None:
    rng = np.random.default_rng(0)
    aum, full, early = rng.normal(size=50), rng.random(50), rng.random(50)
    reference = mislabel_score(aum=aum, el2n_all_epochs=full, el2n_early=early)
    transformed = mislabel_score(aum=3.0 * aum + 1.0, el2n_all_epochs=np.sqrt(full), el2n_early=early**3)
    np.testing.assert_allclose(transformed, reference)
    assert ((reference >= 0.0) & (reference <= 1.0)).all()


def test_signals_are_keyword_only() -> None:
    # The signature changed from (aum, self_confidence, el2n): a positional call must fail loudly,
    # never mix up signals of opposite directions.
    with pytest.raises(TypeError):
        mislabel_score(np.zeros(2), np.zeros(2), np.zeros(2))  # type: ignore[misc]


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"1-D arrays of one length .* shapes \{'aum': \(3,\), 'el2n_all_epochs': \(2,\)"):
        mislabel_score(aum=np.zeros(3), el2n_all_epochs=np.zeros(2), el2n_early=np.zeros(3))
    with pytest.raises(ValueError, match=r"1-D arrays of one length"):
        mislabel_score(aum=np.zeros((2, 2)), el2n_all_epochs=np.zeros(2), el2n_early=np.zeros(2))


def test_neighbor_disagreement_is_a_fourth_rank() -> None:
    aum = np.array([3.0, 1.0, 2.0])  # -aum ranks: 0, 1, 0.5
    el2n_all = np.array([0.1, 0.3, 0.2])  # ranks 0, 1, 0.5
    el2n_early = np.array([0.2, 0.1, 0.3])  # ranks 0.5, 0, 1
    disagreement = np.array([1.0, 0.0, NAN])  # ranks 1, 0, (NaN: dropped for sample 2 only)
    score = mislabel_score(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early,
                           neighbor_disagreement=disagreement)
    np.testing.assert_allclose(score, [(0 + 0 + 0.5 + 1) / 4, (1 + 1 + 0 + 0) / 4, (0.5 + 0.5 + 1) / 3])
    three = mislabel_score(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early)
    np.testing.assert_allclose(three, [0.5 / 3, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="neighbor_disagreement"):
        mislabel_score(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early, neighbor_disagreement=np.zeros(2))


# ------------------------------------------------------------------ weights from pseudo-labels
def test_average_precision_hand_computed() -> None:
    from dq_plugins.scores.mislabel import average_precision

    # order by score: rows 2 (pos), 0 (neg), 1 (pos), 3 (neg): precisions at the positives 1/1 and 2/3
    assert average_precision(np.array([False, True, True, False]), np.array([0.8, 0.5, 0.9, 0.1])) == pytest.approx(
        (1.0 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.zeros(3, bool), np.arange(3.0)))
    # tied rows count together, whatever their order: a constant score gets the positives' rate
    assert average_precision(np.array([True, False, False, False]), np.ones(4)) == pytest.approx(0.25)
    assert average_precision(np.array([False, False, False, True]), np.ones(4)) == pytest.approx(0.25)
    # [0.9, 0.5, 0.5, NaN] with positives at rows 1 and 3: the tie (rows 1-2) adds recall 1/2 at precision 1/3,
    # the NaN row (last) the other 1/2 at precision 2/4
    assert average_precision(np.array([False, True, False, True]), np.array([0.9, 0.5, 0.5, NAN])) == pytest.approx(
        0.5 / 3 + 0.5 * 2 / 4)


def test_signal_weights_favour_the_signal_that_finds_the_pseudo_labels() -> None:
    from dq_plugins.scores.mislabel import MIN_PSEUDO_LABELS, WEIGHT_POWER, signal_weights

    rng = np.random.default_rng(0)
    pseudo = np.zeros(100, bool)
    pseudo[:20] = True
    perfect = np.where(pseudo, 1.0, 0.0) + rng.random(100) * 0.5  # every pseudo-label first: AP 1
    random = rng.random(100)
    weights = signal_weights(np.stack([percentile_rank(perfect), percentile_rank(random)]), pseudo)
    from dq_plugins.scores.mislabel import average_precision

    lift_random = max(average_precision(pseudo, random) - 0.2, 0.0) ** WEIGHT_POWER
    assert weights[0] == pytest.approx(0.8**WEIGHT_POWER / (0.8**WEIGHT_POWER + lift_random))
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0.9
    ranks = np.stack([percentile_rank(perfect), percentile_rank(random)])
    np.testing.assert_allclose(signal_weights(ranks, None), [0.5, 0.5])  # no pseudo-labels: equal
    few = np.zeros(100, bool)
    few[: MIN_PSEUDO_LABELS - 1] = True
    np.testing.assert_allclose(signal_weights(ranks, few), [0.5, 0.5])
    with pytest.raises(ValueError, match=r"`pseudo_labels` of shape \(100,\)"):
        signal_weights(ranks, pseudo[:50])


def test_pseudo_labels_weigh_the_mean_of_ranks() -> None:
    pseudo = np.array([True] * 10 + [False] * 30)
    good = np.where(pseudo, 2.0, 0.0) + np.linspace(0, 1, 40)  # finds the pseudo-labels
    bad = -good  # the reverse order: no lift, weight 0
    score = mislabel_score(aum=-good, el2n_all_epochs=good, el2n_early=bad, pseudo_labels=pseudo)
    np.testing.assert_allclose(score, percentile_rank(good))  # the zero-weight signal has no say
    equal = mislabel_score(aum=-good, el2n_all_epochs=good, el2n_early=bad)
    np.testing.assert_allclose(equal, (2 * percentile_rank(good) + percentile_rank(bad)) / 3)


# ------------------------------------------------------------------ the steadier all-epoch signal
def test_half_instability_hand_computed() -> None:
    from dq_plugins.scores.mislabel import half_instability

    first = np.array([1.0, 2.0, 3.0, 4.0])
    assert half_instability(first, 10.0 * first) == pytest.approx(0.0)  # same order: 0
    assert half_instability(first, -first) == pytest.approx(2.0)  # reversed: 2
    # ranks [1, 2, 3, 4] vs [2, 1, 3, 4]: Spearman rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert half_instability(first, np.array([2.0, 1.0, 3.0, 4.0])) == pytest.approx(0.2)
    # a row missing in one half is left out: the other three keep one order
    assert half_instability(np.array([1.0, 2.0, 3.0, NAN]), np.array([5.0, 6.0, 7.0, 0.0])) == pytest.approx(0.0)
    assert np.isnan(half_instability(np.array([1.0, 2.0, NAN]), np.array([1.0, 2.0, 3.0])))  # 2 rows: no order
    assert np.isnan(half_instability(np.ones(4), first))  # a constant half has no order
    with pytest.raises(ValueError, match=r"two 1-D arrays of one length .* \(4,\) and \(3,\)"):
        half_instability(first, first[:3])


def test_instability_keeps_only_the_steadier_all_epoch_signal() -> None:
    rng = np.random.default_rng(0)
    aum, el2n_all, el2n_early = rng.normal(size=40), rng.random(40), rng.random(40)
    pseudo = np.arange(40) < 10  # the pseudo-labels come first in every signal: equal lifts, equal weights
    aum[pseudo], el2n_all[pseudo], el2n_early[pseudo] = -10.0 - rng.random(10), 2.0 + rng.random(10), 2.0 + rng.random(10)
    ranks = {"aum": percentile_rank(-aum), "all": percentile_rank(el2n_all), "early": percentile_rank(el2n_early)}
    kwargs = dict(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early)
    both = (ranks["aum"] + ranks["all"] + ranks["early"]) / 3
    np.testing.assert_allclose(mislabel_score(**kwargs, pseudo_labels=pseudo), both)
    steady_aum = mislabel_score(**kwargs, pseudo_labels=pseudo, instability=(0.05, 0.10))
    np.testing.assert_allclose(steady_aum, (ranks["aum"] + ranks["early"]) / 2)  # EL2N left out
    steady_el2n = mislabel_score(**kwargs, pseudo_labels=pseudo, instability=(0.10, 0.05))
    np.testing.assert_allclose(steady_el2n, (ranks["all"] + ranks["early"]) / 2)  # AUM left out
    for tie_or_unknown in [(0.1, 0.1), (NAN, 0.05), (0.05, NAN)]:
        np.testing.assert_allclose(mislabel_score(**kwargs, pseudo_labels=pseudo, instability=tie_or_unknown), both)
    # no pseudo-labels, or too few (the early window not trusted): both take part, equal weights
    np.testing.assert_allclose(mislabel_score(**kwargs, instability=(0.05, 0.10)), both)
    few = pseudo & (np.arange(40) < 9)
    np.testing.assert_allclose(mislabel_score(**kwargs, pseudo_labels=few, instability=(0.05, 0.10)), both)
    with pytest.raises(ValueError, match=r"`instability` = \(aum, el2n_all_epochs\), two floats"):
        mislabel_score(**kwargs, instability=(0.1, 0.2, 0.3))  # type: ignore[arg-type]


# ------------------------------------------------------------------ memorisation moves the weight between windows
def test_memorised_share_hand_computed() -> None:
    from dq_plugins.scores.mislabel import memorised_share

    # 3 epochs x 6 rows; the last epoch that saw each row: row 0 fitted, row 1 not (epoch 1, epoch 2 missed it),
    # row 2 fitted at epoch 2 after a miss, row 3 never seen, rows 4-5 not pseudo-labelled
    correct = np.array([[0.0, 1.0, 0.0, NAN, 1.0, 0.0],
                        [1.0, 0.0, 0.0, NAN, 1.0, 0.0],
                        [1.0, NAN, 1.0, NAN, 1.0, 0.0]])
    pseudo = np.array([True, True, True, True, False, False])
    assert memorised_share(correct, pseudo) == pytest.approx(2 / 3)
    assert np.isnan(memorised_share(correct, None))
    assert np.isnan(memorised_share(correct, np.zeros(6, bool)))
    assert np.isnan(memorised_share(np.full((3, 6), NAN), pseudo))
    with pytest.raises(ValueError, match=r"`correct` of shape \(epochs, N\) and `pseudo_labels` of shape \(N,\)"):
        memorised_share(correct, pseudo[:3])


def test_memorisation_moves_the_weight_from_the_late_signals_to_the_early_window() -> None:
    rng = np.random.default_rng(1)
    pseudo = np.arange(40) < 10  # first in every signal: equal lifts, equal weights before the move
    aum, el2n_all, el2n_early, nd = -rng.random(40), rng.random(40), rng.random(40), rng.random(40)
    aum[pseudo], el2n_all[pseudo], el2n_early[pseudo], nd[pseudo] = -2.0, 2.0 + rng.random(10), 2.0 + rng.random(10), 2.0
    kwargs = dict(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early, neighbor_disagreement=nd,
                  pseudo_labels=pseudo)
    late = (percentile_rank(-aum) + percentile_rank(el2n_all) + percentile_rank(nd)) / 3
    early = percentile_rank(el2n_early)
    unmoved = mislabel_score(**kwargs)
    np.testing.assert_allclose(unmoved, (3 * late + early) / 4)
    np.testing.assert_allclose(mislabel_score(**kwargs, memorised=0.5), unmoved)  # even: no move
    np.testing.assert_allclose(mislabel_score(**kwargs, memorised=1.0), early)  # memorised: the early window only
    np.testing.assert_allclose(mislabel_score(**kwargs, memorised=0.0), late)  # nothing memorised: no early say
    # m = 0.8: weights 0.2 on each late signal, 0.8 on the early one
    np.testing.assert_allclose(mislabel_score(**kwargs, memorised=0.8), (3 * 0.2 * late + 0.8 * early) / 1.4)
    np.testing.assert_allclose(mislabel_score(**kwargs, memorised=NAN), unmoved)
    # without pseudo-labels the weights are equal and nothing moves
    plain = mislabel_score(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early, neighbor_disagreement=nd)
    np.testing.assert_allclose(mislabel_score(aum=aum, el2n_all_epochs=el2n_all, el2n_early=el2n_early,
                                              neighbor_disagreement=nd, memorised=1.0), plain)
    # an early window left out (NaN): the late signals keep their weights whatever m
    no_early = dict(kwargs, el2n_early=np.full(40, NAN))
    np.testing.assert_allclose(mislabel_score(**no_early, memorised=1.0), mislabel_score(**no_early))
    with pytest.raises(ValueError, match=r"`memorised` in \[0, 1\]"):
        mislabel_score(**kwargs, memorised=1.5)
