"""Linear probes fitted to convergence: L2-regularised multinomial logistic regression on cached features.

A probe on frozen features is a convex problem: full-batch L-BFGS solves it in seconds, whereas a few Trainer
epochs of AdamW stop far from the optimum (DINOv2-small on 2000 images: 0.76 test accuracy after 10 epochs
vs 0.92 for scikit-learn's LogisticRegression on the same features, issue 10). As the CLIP paper's probes do,
the L2 strength is swept over a log-spaced grid (warm-starting each fit from the previous one), the value that
does best on held-out data is kept, and its fit on the training split is the head. Held out means the validation
split when it is large (best accuracy); a small one is pooled with train for k-fold cross-validation (lowest
log-loss), see `select_and_fit`.

The objective is scikit-learn's: `C * sum_i CE_i + ||W||^2 / 2` (intercept not penalised), here divided by
`C * n` so the gradient tolerance does not depend on the dataset size: `mean CE + ||W||^2 / (2 C n)`. By default
each feature is first standardised on the training split, as scikit-learn's StandardScaler before
LogisticRegression, and the scaling is folded into the head's weight and bias (issue 10: with one penalty on raw
weights the probe trailed the scaler + LogisticRegression baseline by 1.5 points on digits and 0.6 on photos).
"""

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

logger = logging.getLogger(__name__)

# C for features scaled to unit variance (see select_and_fit): 1e-4 ... 1e4, 4 values per decade; the ends are
# for tiny or separable data.
DEFAULT_C_GRID = tuple(10.0 ** (k / 4) for k in range(-16, 17))
# Gradient tolerance (max absolute entry) of the mean objective; scikit-learn's default is 1e-4.
DEFAULT_TOL = 1e-6
# Tolerance of the fits that only score a value of C (scikit-learn's default, the baseline probe's). Polishing the
# chosen fit to DEFAULT_TOL afterwards costs a few iterations; scoring every C at 1e-6 took 4-6x longer (5-fold
# cross-validation on the bench's photos: 45.8 s at 1e-6 against 7.4 s, the same test accuracy within 0.6 points).
SELECT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000
# Without a validation split, or with a small one, C is chosen by this many folds of cross-validation.
DEFAULT_FOLDS = 5
# How C is chosen (`select_and_fit`): "auto" cross-validates on train + validation below this many validation
# rows, else scores each C on validation. On the quality bench's sets (20-100 validation rows) validation accuracy
# is coarse and ties over wide ranges of C: drums' 51 clips tied 5 values across 1.25 decades and the tie-break
# picked C=0.0056, 0.703 test accuracy against 0.721 for scikit-learn's C=0.1; 5-fold cross-validation on the
# pooled 353 clips chose C=0.18 (0.721). At 1000 rows one row is 0.1 point of accuracy and validation decides well.
# CV_CRITERION: cross-validation keeps the C of lowest held-out log-loss. Over 6 fold seeds on the bench's five
# sets (frozen DINOv2 / Whisper features, test accuracy of the chosen C), log-loss gave the best mean and worst
# case everywhere: digits 0.820 / 0.820, photos 0.776 / 0.772, speech 0.990 / 0.990, language 0.936 / 0.935, drums
# 0.721 / 0.721; best accuracy with ties to the lower log-loss 0.820 / 0.815, 0.775 / 0.761, 0.990 / 0.990,
# 0.934 / 0.925, 0.721 / 0.721; ties to the smaller C 0.820 / 0.815, 0.770 / 0.733, 0.988 / 0.985, 0.921 / 0.915,
# 0.719 / 0.712 (scikit-learn's probe, C on validation: 0.825, 0.767, 0.990, 0.920, 0.721). Accuracy over a few
# hundred rows is flat across decades of C, so its maximum is noise; the log-loss curve is smooth.
PROBE_SELECTIONS = ("auto", "validation", "cross_validation")
AUTO_CV_BELOW_VALIDATION_ROWS = 1000
FEATURE_KEYS = ("image_embeds", "audio_embeds", "pooled_embeds")


@dataclass
class LinearFit:
    """`logits = features @ weight.T + bias`; `n_iter` L-BFGS iterations; `converged` when the gradient is below tol."""

    weight: torch.Tensor  # (num_classes, dim)
    bias: torch.Tensor  # (num_classes,)
    n_iter: int
    converged: bool

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight.T + self.bias


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float,
    num_classes: int | None = None,
    *,
    init: LinearFit | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> LinearFit:
    """Multinomial logistic regression with L2 strength `1 / C` (scikit-learn's convention) by full-batch L-BFGS.

    features (n, dim), labels (n,) integer classes in [0, num_classes); computed in float64 on the features'
    device. `init` warm-starts from a previous fit (e.g. the neighbouring C of a sweep).
    """
    x = features.to(torch.float64)
    y = labels.to(device=x.device, dtype=torch.long)
    n, dim = x.shape
    num_classes = num_classes or int(y.max()) + 1
    # Centring changes nothing but the conditioning: the unpenalised intercept absorbs the shift
    # (W (x - mean) + b = W x + b - W mean). Encoder features sit far from the origin (DINOv2-small CLS: mean
    # |offset| 1.5 per dimension for a spread of 0.5), which made L-BFGS stall at its iteration cap.
    # Likewise one global scale: the problem on x / s with C * s^2 is the same problem, with weights W * s.
    mean = x.mean(0)
    scale = feature_variance(x) ** 0.5 or 1.0
    x = (x - mean) / scale
    if init is None:
        weight = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device)
        bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    else:
        weight = init.weight.to(x) * scale
        bias = init.bias.to(x) + init.weight.to(x) @ mean
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    l2 = 1.0 / (2.0 * C * scale**2 * n)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    n_iter = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    closure()
    grad = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    weight = weight.detach() / scale
    return LinearFit(weight, bias.detach() - weight @ mean, n_iter, converged=grad <= tol)


def feature_variance(features: torch.Tensor) -> float:
    """Mean per-dimension variance: C on the grid is for features of unit variance, C / this in their own units."""
    return features.to(torch.float64).var(0, unbiased=False).mean().item()


def _scores(fit: LinearFit, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean log-loss) of `fit` on a held-out set."""
    with torch.no_grad():
        logits = fit.logits(features)
        labels = labels.to(device=logits.device, dtype=torch.long)
        accuracy = (logits.argmax(-1) == labels).double().mean().item()
        return accuracy, F.cross_entropy(logits, labels).item()


def sweep(train_x, train_y, held_x, held_y, grid, num_classes, **fit_kwargs) -> tuple[list, list, list]:
    """Fit every C of `grid` (ascending, each warm-started from the previous) on train; score each on held out.

    Returns (fits, accuracies, log_losses), one per C.
    """
    fits, accuracies, losses, previous = [], [], [], None
    for C in grid:
        previous = fit_logistic_regression(train_x, train_y, C, num_classes, init=previous, **fit_kwargs)
        accuracy, loss = _scores(previous, held_x, held_y)
        fits.append(previous)
        accuracies.append(accuracy)
        losses.append(loss)
    return fits, accuracies, losses


def _best(accuracies, losses) -> int:
    # Best held-out accuracy; ties (common on small validation sets) go to the lower held-out log-loss.
    return min(range(len(accuracies)), key=lambda i: (-accuracies[i], losses[i]))


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold index per sample, each class dealt round-robin over the folds in a seeded random order."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # rotate so small classes do not all land in fold 0
    return assignment


@dataclass
class ProbeResult:
    """The chosen fit and how it was chosen."""

    fit: LinearFit
    C: float
    selection: str  # "validation", or "<k>-fold cross-validation on train" (or "on train + validation")
    grid: tuple
    held_out_accuracy: list  # per grid value: validation accuracy, or mean cross-validation accuracy
    held_out_log_loss: list  # per grid value, likewise
    n_iter: int  # iterations of the chosen fit (from its warm start)
    total_iter: int  # every fit of the selection, summed


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per feature, as scikit-learn's StandardScaler: a constant feature keeps std 1."""
    x = features.to(torch.float64)
    std = x.std(0, unbiased=False)
    return x.mean(0), torch.where(std > 0, std, torch.ones_like(std))


def unstandardize(fit: LinearFit, mean: torch.Tensor, std: torch.Tensor) -> LinearFit:
    """The same logits on unstandardised features: W (x - mean) / std + b = (W / std) x + (b - (W / std) mean)."""
    weight = fit.weight / std.to(fit.weight)
    return LinearFit(weight, fit.bias - weight @ mean.to(weight), fit.n_iter, fit.converged)


def select_and_fit(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    num_classes: int | None = None,
    grid=DEFAULT_C_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    standardize: bool = True,
    selection: str = "auto",
    **fit_kwargs,
) -> ProbeResult:
    """Choose C on held-out data and fit.

    `selection`: "validation" scores each C of `grid` on the validation split; "cross_validation" by `folds`-fold
    stratified cross-validation on train and validation pooled; "auto" (default) cross-validates when the
    validation split has fewer than AUTO_CV_BELOW_VALIDATION_ROWS rows. Without a validation split, C is chosen by
    cross-validation on train. On validation the best accuracy wins (ties to the lower log-loss), as the CLIP
    paper's probes; by cross-validation the lowest log-loss (CV_CRITERION).
    The head is the training-split fit at the chosen C: validation only helps choose C, so the validation metrics
    reported after training come from data the head never trained on.

    With `standardize` (default) the problem is scikit-learn's StandardScaler + LogisticRegression: each feature is scaled to zero mean and unit variance on the training
    split, so the L2 penalty weighs every feature alike instead of favouring the high-variance ones, and the
    scaling is folded back into the returned weight and bias (an affine head absorbs it exactly). `C` and
    `grid` are then scikit-learn's C on standardised features. Without it, `grid` holds C for features of unit
    variance and is divided by the training features' mean per-dimension variance; `C` and `grid` are in the
    features' own units.
    """
    if selection not in PROBE_SELECTIONS:
        raise ValueError(f"selection must be one of {PROBE_SELECTIONS}, got {selection!r}")
    if val_x is not None and not len(val_x):
        val_x = val_y = None
    if val_x is None and selection == "validation":
        raise UserError(
            "--probe_selection validation scores each L2 strength on the validation split, and this run has none: "
            "pass --validation_dir/--validation_file (or --train_val_split), or drop --probe_selection (C is then "
            "chosen by cross-validation on train)."
        )
    if val_x is not None and selection == "auto":
        selection = "cross_validation" if len(val_x) < AUTO_CV_BELOW_VALIDATION_ROWS else "validation"
    grid = tuple(sorted(grid))
    if not standardize:
        variance = feature_variance(train_x) or 1.0
        grid = tuple(C / variance for C in grid)
        return _select_and_fit(train_x, train_y, val_x, val_y, num_classes, grid, folds, seed, selection, **fit_kwargs)
    mean, std = standardizer(train_x)
    val_z = None if val_x is None else (val_x.to(mean) - mean) / std
    result = _select_and_fit(
        (train_x.to(mean) - mean) / std, train_y, val_z, val_y, num_classes, grid, folds, seed, selection, **fit_kwargs
    )
    result.fit = unstandardize(result.fit, mean, std)
    return result


def _select_and_fit(
    train_x, train_y, val_x, val_y, num_classes, grid, folds, seed, selection, tol=DEFAULT_TOL, **fit_kwargs
) -> ProbeResult:
    """select_and_fit on features as given, `grid` ascending and in their units, `selection` resolved."""
    num_classes = num_classes or int(max(train_y.max(), val_y.max() if val_y is not None else 0)) + 1
    scoring = dict(fit_kwargs, tol=max(tol, SELECT_TOL))
    if val_x is not None and selection == "validation":
        fits, accuracies, losses = sweep(train_x, train_y, val_x, val_y, grid, num_classes, **scoring)
        best = _best(accuracies, losses)
        chosen, where, total_iter = fits[best], "validation", sum(f.n_iter for f in fits)
    else:
        if val_x is None:
            pool_x, pool_y, where = train_x, train_y, "train"
        else:
            pool_x, pool_y = torch.cat([train_x, val_x.to(train_x)]), torch.cat([train_y, val_y.to(train_y)])
            where = "train + validation"
        accuracies, losses, total_iter = cross_validate(pool_x, pool_y, grid, num_classes, folds, seed, **scoring)
        accuracies, losses, where = accuracies.tolist(), losses.tolist(), f"{folds}-fold cross-validation on {where}"
        # The lowest cross-validated log-loss, not the best accuracy: see CV_CRITERION.
        best = min(range(len(grid)), key=losses.__getitem__)
        # Refit on the training split, warm-started along the grid up to the chosen C.
        chosen = None
        for C in grid[: best + 1]:
            chosen = fit_logistic_regression(train_x, train_y, C, num_classes, init=chosen, **scoring)
            total_iter += chosen.n_iter
    # The chosen C's training fit, taken from the scoring tolerance to the final one.
    fit = fit_logistic_regression(train_x, train_y, grid[best], num_classes, init=chosen, tol=tol, **fit_kwargs)
    return ProbeResult(
        fit, grid[best], where, grid, accuracies, losses, chosen.n_iter + fit.n_iter, total_iter + fit.n_iter
    )


def cross_validate(x, y, grid, num_classes, folds, seed, **fit_kwargs) -> tuple[np.ndarray, np.ndarray, int]:
    """(accuracy, log-loss) per C of `grid`, each pooled over `folds` stratified folds of (x, y) (a fold's share
    weighted by its size), and the L-BFGS iterations spent."""
    assignment = torch.as_tensor(stratified_folds(y.cpu().numpy(), folds, seed), device=y.device)
    accuracies, losses, total_iter = np.zeros(len(grid)), np.zeros(len(grid)), 0
    for fold in range(folds):
        held = assignment == fold
        if not held.any() or held.all():
            continue
        fits, fold_acc, fold_loss = sweep(x[~held], y[~held], x[held], y[held], grid, num_classes, **fit_kwargs)
        accuracies += np.asarray(fold_acc) * held.sum().item() / len(y)
        losses += np.asarray(fold_loss) * held.sum().item() / len(y)
        total_iter += sum(f.n_iter for f in fits)
    return accuracies, losses, total_iter


# ---- the classifiers' heads ----


def cached_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) tensors of a dataset made by `mm_hf.features.precompute_features`."""
    key = next((k for k in FEATURE_KEYS if k in dataset.column_names), None)
    if key is None:
        raise ValueError(f"No cached features ({', '.join(FEATURE_KEYS)}) in columns {dataset.column_names}")
    data = dataset.with_format("numpy")
    return torch.as_tensor(np.asarray(data[key]), dtype=torch.float64), torch.as_tensor(data["labels"])


def is_cosine_head(head) -> bool:
    """`CosineClassifierHead` (CLIP/CLAP classifiers): logits = exp(logit_scale) * normalize(x) @ W.T + b."""
    return hasattr(head, "logit_scale") and hasattr(head, "weight")


def head_linear(model) -> torch.nn.Module:
    """The module holding the head's weight and bias: the cosine head itself, or the audio classifier's Linear."""
    head = model.classifier
    if is_cosine_head(head):
        return head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise ValueError(f"The L-BFGS probe fits a single linear head; {type(model).__name__} has {head}")
    return linears[0]


def head_inputs(model, features: torch.Tensor) -> torch.Tensor:
    """What the head's affine map sees: L2-normalised features for a cosine head, the features otherwise."""
    return F.normalize(features, dim=-1) if is_cosine_head(model.classifier) else features


@torch.no_grad()
def write_head(model, fit: LinearFit) -> None:
    """Store `fit` in the model's head so its logits (eval mode) equal `fit.logits(head_inputs(features))`."""
    linear = head_linear(model)
    weight = fit.weight
    if is_cosine_head(linear):
        # forward multiplies by exp(logit_scale), clamped at CLIP's maximum of 100.
        scale = linear.logit_scale.detach().double().clamp(max=math.log(100.0)).exp().item()
        weight = weight / scale
    linear.weight.copy_(weight.to(linear.weight))
    linear.bias.copy_(fit.bias.to(linear.bias))


def fit_classifier_head(
    model, train, validation=None, *, device=None, standardize: bool = True, **select_kwargs
) -> dict:
    """Fit the classifier's head on cached features (datasets from `precompute_features`) by `select_and_fit`.

    The head's dropout plays no part: the L2 penalty chosen on held-out data is the regulariser.

    Returns what all_results.json records: the training loss, solver, chosen C (and the equivalent L2 coefficient
    on the mean loss), how C was chosen, the grid of C and the held-out accuracy of each, L-BFGS iterations (of
    the chosen fit and of the whole selection), whether it converged, and fit seconds.
    """
    start = time.perf_counter()
    device = device or "cpu"
    train_x, train_y = cached_features(train)
    val_x = val_y = None
    if validation is not None and len(validation):
        val_x, val_y = cached_features(validation)
        val_x, val_y = head_inputs(model, val_x).to(device), val_y.to(device)
    train_x, train_y = head_inputs(model, train_x).to(device), train_y.to(device)
    result = select_and_fit(
        train_x, train_y, val_x, val_y, num_classes=model.config.num_labels, standardize=standardize, **select_kwargs
    )
    write_head(model, result.fit)
    _, train_loss = _scores(result.fit, train_x, train_y)
    seconds = time.perf_counter() - start
    logger.info(
        "L-BFGS linear probe: C=%.4g chosen by %s (held-out accuracy %.4f), %d iterations (%d in the sweep), %.1f s%s",
        result.C,
        result.selection,
        result.held_out_accuracy[result.grid.index(result.C)],
        result.n_iter,
        result.total_iter,
        seconds,
        "" if result.fit.converged else " (not converged: raise max_iter)",
    )
    return {
        "train_loss": train_loss,  # cross-entropy on the training split, without the L2 term
        "probe_solver": "lbfgs",
        "probe_standardized": standardize,  # probe_C is then scikit-learn's C after StandardScaler
        "probe_C": result.C,
        "probe_l2": 1.0 / (result.C * len(train_y)),
        "probe_selection": result.selection,
        "probe_C_grid": list(result.grid),
        "probe_held_out_accuracy": list(result.held_out_accuracy),  # one per probe_C_grid value
        "probe_held_out_log_loss": list(result.held_out_log_loss),
        "probe_iterations": result.n_iter,
        "probe_total_iterations": result.total_iter,
        "probe_converged": result.fit.converged,
        "probe_fit_seconds": seconds,
    }


# ---- the recipes' linear_probe path ----


def use_lbfgs_probe(ft_args, training_args, *, cached: bool, why_uncached: str = "--precompute_features false") -> bool:
    """Whether a recipe fits its head with the L-BFGS solver; refuses the combinations the solver cannot honour.

    Call before any feature is computed. `cached` says whether the run caches frozen features (the solver
    needs them); `why_uncached` names what prevents it, for the error message.
    """
    if ft_args.finetune_strategy != "linear_probe" or ft_args.probe_solver != "lbfgs" or not training_args.do_train:
        return False
    if not cached:
        raise ValueError(
            f"--probe_solver lbfgs fits the head on cached frozen features, and {why_uncached} means the backbone "
            "runs on every batch instead: pass --probe_solver trainer to train the head by Trainer epochs."
        )
    if ft_args.early_stopping_patience is not None:
        raise ValueError(
            "--early_stopping_patience watches Trainer evaluations, but --probe_solver lbfgs trains to convergence "
            "and chooses the L2 strength on validation: drop --early_stopping_patience, or pass --probe_solver trainer."
        )
    if training_args.resume_from_checkpoint:
        raise ValueError(
            "--resume_from_checkpoint resumes Trainer epochs; --probe_solver lbfgs has none (a fit takes seconds): "
            "drop it, or pass --probe_solver trainer."
        )
    logger.info(
        "linear_probe with --probe_solver lbfgs: the head is fitted by L-BFGS on cached features; --learning_rate, "
        "--num_train_epochs, --max_steps, the optimizer settings and --head_dropout are not used "
        "(--probe_solver trainer uses them)."
    )
    return True
