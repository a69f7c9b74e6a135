"""Top-k accuracy from the k best predicted class ids of each sample."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose true class is among the k predicted class ids.
Predictions are the ids themselves (e.g. `logits.topk(k).indices`), not logits, so the caller
never has to keep `num_samples x num_labels` scores around.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): the top predicted class ids per sample, best first, all rows the same length.
    references (`list[int]`): true class ids.
    k (`int`, *optional*): use only the first k ids of each row; defaults to the row length.
Returns:
    top_k_accuracy (`float`): fraction of samples whose reference is among the first k ids.
    k (`int`): the k used.
Examples:
    >>> top_k = evaluate.load("mm_hf/metrics/top_k_accuracy")
    >>> top_k.compute(predictions=[[2, 0], [1, 2]], references=[0, 0])
    {'top_k_accuracy': 0.5, 'k': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        # No numpy format here: evaluate only allows it for scalar features, not sequences.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.top_k_accuracy_score.html"
            ],
        )

    def _compute(self, predictions, references, k=None):
        references = np.asarray(references, dtype=np.int64)
        top = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        k = top.shape[1] if k is None else int(k)
        if not 0 < k <= top.shape[1]:
            raise ValueError(f"k must be in [1, {top.shape[1]}] (ids given per sample), got {k}")
        hits = (top[:, :k] == references[:, None]).any(axis=1)
        return {"top_k_accuracy": float(hits.mean()) if hits.size else 0.0, "k": k}
