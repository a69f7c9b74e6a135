"""Regression report: MAE, MSE, RMSE, R^2, Pearson and Spearman correlation, for one or several outputs."""

import datasets
import evaluate
import numpy as np
from scipy import stats
from sklearn import metrics

_DESCRIPTION = """
Regression report for a single target (`predictions` and `references` are floats) or several outputs
(both are equal-length float sequences, one value per output). With several outputs every metric is
reported per output as `<metric>_<name>` (names default to the output index: `mae_0`, `mae_1`, ...) and
the plain key (`mae`, ...) is the unweighted mean over outputs (sklearn's `multioutput="uniform_average"`;
`rmse` is the mean of the per-output RMSEs).

Undefined values are left out, never reported as NaN: Pearson and Spearman correlation need at least two
samples and neither predictions nor references constant; where that fails the key is omitted (and the
averages are over the outputs where it holds; omitted when there are none). `r2` needs two samples;
with constant references it follows sklearn: 1.0 for a perfect prediction, else 0.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]` or `list[list[float]]`): predicted values, one float (or one per output) per sample.
    references (`list[float]` or `list[list[float]]`): true values, same shape.
    output_names (`list[str]`, *optional*): one unique name per output, used as the per-output key suffix
        (multi-output only); defaults to "0", "1", ...
Returns (a flat dict of floats):
    mae, mse, rmse: mean absolute error, mean squared error and its square root.
    r2: coefficient of determination.
    pearson, spearman: linear and rank correlation between predictions and references (only where defined).
    mae_<name>, mse_<name>, ...: the same per output, multi-output only.
Examples:
    >>> report = evaluate.load("mm_hf/metrics/regression_report")
    >>> out = report.compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 2.0, 3.0])
    >>> out["mae"], out["mse"], out["r2"]
    (0.3333333333333333, 0.3333333333333333, 0.5)
"""

_METRICS = ("mae", "mse", "rmse", "r2", "pearson", "spearman")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RegressionReport(evaluate.Metric):
    def _info(self):
        # Multi-output first: a length-1 sequence would otherwise pass as a scalar. No numpy format:
        # evaluate allows it only for a single set of scalar features.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.List(datasets.Value("float64")),
                        "references": datasets.List(datasets.Value("float64")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("float64"),
                        "references": datasets.Value("float64"),
                    }
                ),
            ],
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#regression-metrics"],
        )

    def _compute(self, predictions, references, output_names=None):
        predicted = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(references, dtype=np.float64)
        if predicted.shape != targets.shape or predicted.ndim not in (1, 2) or predicted.size == 0:
            raise ValueError(
                f"predictions and references must have the same 1-D or 2-D shape, got "
                f"{predicted.shape} and {targets.shape}"
            )
        if not (np.isfinite(predicted).all() and np.isfinite(targets).all()):
            raise ValueError("predictions and references must be finite (no NaN or infinity)")
        if predicted.ndim == 1:
            if output_names is not None:
                raise ValueError("output_names is for multi-output regression (sequences per sample)")
            return regression_scores(predicted, targets)
        names = _output_names(predicted.shape[1], output_names)
        per_output = [regression_scores(predicted[:, j], targets[:, j]) for j in range(predicted.shape[1])]
        out = {}
        for metric in _METRICS:
            values = [scores[metric] for scores in per_output if metric in scores]
            if values:
                out[metric] = float(np.mean(values))
        for name, scores in zip(names, per_output, strict=True):
            out.update({f"{metric}_{name}": value for metric, value in scores.items()})
        return out


def _output_names(num_outputs, output_names):
    if output_names is None:
        return [str(j) for j in range(num_outputs)]
    names = [str(name) for name in output_names]
    if len(names) != num_outputs or len(set(names)) != num_outputs:
        raise ValueError(f"output_names must hold {num_outputs} unique names, got {names}")
    return names


def regression_scores(predicted, targets):
    """The report for one output, from 1-D finite predictions and references."""
    mse = metrics.mean_squared_error(targets, predicted)
    out = {"mae": metrics.mean_absolute_error(targets, predicted), "mse": mse, "rmse": np.sqrt(mse)}
    if len(targets) >= 2:
        out["r2"] = metrics.r2_score(targets, predicted)
        # Correlation with a constant is 0/0; np.ptp is exact where a variance test could round.
        if np.ptp(predicted) > 0 and np.ptp(targets) > 0:
            out["pearson"] = stats.pearsonr(predicted, targets).statistic
            out["spearman"] = stats.spearmanr(predicted, targets).statistic
    return {key: float(value) for key, value in out.items() if np.isfinite(value)}
