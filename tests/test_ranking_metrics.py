"""ranking_report (Recall@K, NDCG@K, hit rate, MRR per user) against hand-worked rankings; the fusion adapter."""

import math

import numpy as np
import pytest

from mm_hf.metrics import load_metric

# User a: 5 candidates, held-out (relevant) ones ranked 2nd and 4th. User b: its one relevant item ranked 3rd of 3.
# User c has no relevant candidate: left out of every mean and counted.
ROWS = [
    ("a", 0.9, 0), ("a", 0.8, 1), ("a", 0.7, 0), ("a", 0.6, 1), ("a", 0.5, 0),
    ("b", 0.1, 1), ("b", 0.4, 0), ("b", 0.3, 0),
    ("c", 0.2, 0), ("c", 0.3, 0),
]  # fmt: skip
LOG2_3, LOG2_5 = math.log2(3), math.log2(5)
# By hand: a's DCG@3 = 1/log2(3), ideal 1 + 1/log2(3); DCG@5 adds 1/log2(5). b: DCG = 1/log2(4) = 0.5, ideal 1.
EXPECTED = {
    "hit_rate@1": 0.0,
    "hit_rate@3": 1.0,
    "recall@1": 0.0,
    "recall@3": (1 / 2 + 1) / 2,
    "recall@5": 1.0,
    "ndcg@1": 0.0,
    "ndcg@3": ((1 / LOG2_3) / (1 + 1 / LOG2_3) + 0.5) / 2,
    "ndcg@5": ((1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3) + 0.5) / 2,
    "mrr": (1 / 2 + 1 / 3) / 2,
    "num_groups": 2.0,
    "num_groups_without_relevant": 1.0,
    "mean_candidates": (5 + 3) / 2,
    "mean_relevant": (2 + 1) / 2,
}


@pytest.fixture(scope="module")
def ranking():
    return load_metric("ranking_report", keep_in_memory=True)


def _columns(rows):
    groups, scores, relevant = zip(*rows, strict=True)
    return {"groups": list(groups), "predictions": list(scores), "references": list(relevant)}


def test_hand_computed_rankings_with_several_held_out_items(ranking):
    out = ranking.compute(**_columns(ROWS), ks=(1, 3, 5))
    assert set(out) == set(EXPECTED) | {"hit_rate@5"}
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key


def test_rows_in_any_order_and_in_batches_give_the_same_report(ranking):
    shuffled = [ROWS[i] for i in np.random.default_rng(0).permutation(len(ROWS))]
    for start in range(0, len(shuffled), 3):  # each user's rows spread over several batches
        ranking.add_batch(**_columns(shuffled[start : start + 3]))
    out = ranking.compute(ks=(1, 3, 5))
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key


def test_ties_pessimistic_by_default_optimistic_on_request(ranking):
    # A model scoring every candidate the same must not look perfect: its relevant item goes last among ties.
    tied = [("u", 0.5, 0), ("u", 0.5, 1), ("u", 0.5, 0), (7, 0.2, 1), (7, 0.9, 0)]
    pessimistic = ranking.compute(**_columns(tied), ks=(1,))
    optimistic = ranking.compute(**_columns(tied), ks=(1,), ties="optimistic")
    assert pessimistic["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert optimistic["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert (pessimistic["hit_rate@1"], optimistic["hit_rate@1"]) == (0.0, 0.5)


def test_bad_inputs_are_refused_with_what_is_wrong():
    ranking = load_metric("ranking_report", keep_in_memory=True)
    with pytest.raises(ValueError, match="0/1"):
        ranking.compute(predictions=[0.1, 0.2], references=[2, 0], groups=["a", "a"])
    with pytest.raises(ValueError, match="no group has a relevant candidate"):
        ranking.compute(predictions=[0.1, 0.2], references=[0, 0], groups=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        ranking.compute(predictions=[float("nan"), 0.2], references=[1, 0], groups=["a", "a"])
    with pytest.raises(ValueError, match="ties"):
        ranking.compute(predictions=[0.1, 0.2], references=[1, 0], groups=["a", "a"], ties="random")
