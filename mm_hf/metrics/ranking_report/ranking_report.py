"""Ranking report (recommendation, search): Recall@K, NDCG@K, hit rate@K and MRR per group, averaged over groups."""

from collections import defaultdict

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-K ranking quality of scored (group, candidate) rows, as recommender systems report it: a group is a user
(or a query), its rows are the candidates ranked for it (its held-out items plus sampled negatives), a reference
says whether the candidate is relevant. Each group's candidates are sorted by score, best first, and per group:

- recall@K: relevant candidates in the top K / relevant candidates of the group (several held-out items per
  user: recall@K < 1 whenever the group has more than K relevant ones);
- ndcg@K: DCG@K / ideal DCG@K, with DCG@K = sum over the top K positions p (1-based) of rel_p / log2(p + 1)
  and the ideal DCG putting every relevant candidate first (binary relevance);
- hit_rate@K: 1 when at least one relevant candidate is in the top K;
- mrr: 1 / rank of the best-ranked relevant candidate (the whole list, no cut-off).

Each metric is the mean over groups with at least one relevant candidate; groups without one are counted in
`num_groups_without_relevant` and left out (no metric is defined for them).

Ties (`ties="pessimistic"`, the default): among equal scores the irrelevant candidates are ranked first, so a
model that scores everything the same gets the worst ranking, not the best; `"optimistic"` ranks the relevant
ones first. Rows of a group may come in any order and be spread over batches (`add_batch`): they are grouped
by the `groups` id; each group is ranked once and only its metric values are kept (running sums): memory is
the rows themselves, never a users x items score matrix.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): one score per row, higher = ranked first (logits or probabilities).
    references (`list[int]`): 0/1, whether the row's candidate is relevant to its group.
    groups (`list[str]` or `list[int]`): the group (user / query) id of each row.
    ks (`tuple[int]`, *optional*, defaults to `(1, 5, 10)`): the K of the @K metrics.
    ties (`str`, *optional*, defaults to `"pessimistic"`): `"pessimistic"` or `"optimistic"` tie handling.
Returns (a flat dict of floats):
    recall@K, ndcg@K, hit_rate@K (for each K), mrr: means over groups with a relevant candidate.
    num_groups: groups evaluated; num_groups_without_relevant: groups left out;
    mean_candidates, mean_relevant: per evaluated group.
Examples:
    >>> report = evaluate.load("mm_hf/metrics/ranking_report")
    >>> out = report.compute(predictions=[0.9, 0.8, 0.7, 0.1, 0.4, 0.3], references=[0, 1, 0, 1, 0, 0],
    ...                      groups=["a", "a", "a", "b", "b", "b"], ks=(1, 3))
    >>> out["hit_rate@1"], out["recall@3"], round(out["mrr"], 4)
    (0.0, 1.0, 0.4167)
"""

_TIES = ("pessimistic", "optimistic")


class RankingAccumulator:
    """The ranking report built batch by batch: `update(groups, scores, references)` any number of times, then
    `result()`. Rows are buffered per group (a group's candidates may span batches) until `result()` ranks each
    group once and adds only its metric values to running sums: never a users x items score matrix."""

    def __init__(self, ks=(1, 5, 10), ties: str = "pessimistic"):
        if ties not in _TIES:
            raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
        self.ks = tuple(dict.fromkeys(int(k) for k in ks))
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ties = ties
        self._open: dict = defaultdict(lambda: ([], []))
        self._sums: dict[str, float] = defaultdict(float)
        # Each evaluated group's value of every metric, in the order groups first appeared: what a bootstrap over
        # groups resamples (mm_hf.evaluate); one float per group and metric, never the rows.
        self.per_group: dict[str, list[float]] = defaultdict(list)
        self._groups = self._skipped = 0

    def update(self, groups, scores, references) -> None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        relevant = np.asarray(references).reshape(-1)
        groups = list(np.asarray(groups).reshape(-1).tolist())
        if not (len(groups) == scores.size == relevant.size):
            raise ValueError(f"got {scores.size} scores, {relevant.size} references and {len(groups)} group ids")
        if not np.isfinite(scores).all():
            raise ValueError("predictions (scores) contain NaN or infinite values")
        if not np.isin(relevant, (0, 1)).all():
            raise ValueError("references must be 0/1 (relevant or not)")
        for group, score, rel in zip(groups, scores.tolist(), relevant.astype(np.int64).tolist(), strict=True):
            self._open[group][0].append(score)
            self._open[group][1].append(rel)

    def _close(self, group) -> None:
        scores, relevant = (np.asarray(values) for values in self._open.pop(group))
        num_relevant = int(relevant.sum())
        if num_relevant == 0:
            self._skipped += 1
            return
        # Sorted by score (descending), ties broken by relevance: irrelevant first when pessimistic.
        order = np.lexsort((relevant if self.ties == "pessimistic" else -relevant, -scores))
        ranked = relevant[order]
        discounts = 1.0 / np.log2(np.arange(2, ranked.size + 2))
        values = {}
        for k in self.ks:
            hits = ranked[:k]
            values[f"recall@{k}"] = hits.sum() / num_relevant
            values[f"ndcg@{k}"] = (hits * discounts[:k]).sum() / discounts[: min(k, num_relevant)].sum()
            values[f"hit_rate@{k}"] = float(hits.any())
        values["mrr"] = 1.0 / (int(np.argmax(ranked)) + 1)
        values["mean_candidates"] = ranked.size
        values["mean_relevant"] = num_relevant
        for key, value in values.items():
            self._sums[key] += value
            self.per_group[key].append(float(value))
        self._groups += 1

    def result(self) -> dict[str, float]:
        for group in list(self._open):
            self._close(group)
        if self._groups == 0:
            raise ValueError(
                f"no group has a relevant candidate ({self._skipped} group(s) seen): nothing to rank; check the "
                "references (1 = relevant) and the group ids"
            )
        out = {key: float(value / self._groups) for key, value in self._sums.items()}
        out["num_groups"] = float(self._groups)
        out["num_groups_without_relevant"] = float(self._skipped)
        return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "references": datasets.Value("int64"),
                    # Strings, so user ids such as "A1B2" and 17 both group; ints are compared as their text.
                    "groups": datasets.Value("string"),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Discounted_cumulative_gain"],
        )

    def _compute(self, predictions, references, groups, ks=(1, 5, 10), ties="pessimistic"):
        accumulator = RankingAccumulator(ks, ties)
        accumulator.update(groups, predictions, references)
        return accumulator.result()
