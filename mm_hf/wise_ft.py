"""WiSE-FT (Wortsman et al., 2022): interpolate between the starting (zero-shot) and the fine-tuned weights of a
model, measure each mixing coefficient α, keep the best.

    start = snapshot(model)            # after building the model (zero-shot head) and apply_strategy
    trainer.train()
    sweep = wise_ft_sweep(model, start, [0, 0.25, 0.5, 0.75, 1], trainer.evaluate, select="eval_accuracy")
    trainer.save_model()               # the model now holds the weights at sweep.alpha

α = 0 is the starting model, α = 1 the fine-tuned one; every shared weight w becomes (1 − α)·w_start + α·w_tuned,
the head included (from its zero-shot initialisation), buffers too. Under LoRA (a peft model) the same rule on the
merged weights W + α·ΔW is met by scaling each adapter's B factor by α (ΔW = B·A is linear in B alone, and peft
starts B at zero) and interpolating the modules_to_save head between its starting and trained copies. Scaling B,
rather than peft's runtime `scaling`, is what `save_pretrained` stores, so an adapter saved at α* reloads at α*, and
`merge_and_unload()` gives the same weights as a plain checkpoint.
"""

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .measures import TrainerMeasure

logger = logging.getLogger(__name__)

# The LoRA "A" factors (Linear/Conv: lora_A.<adapter>.weight; Embedding: lora_embedding_A.<adapter>): they keep
# their trained value at every α, their "B" partner carries α (interpolating both would scale ΔW by α²).
_LORA_A = re.compile(r"(^|\.)lora_(embedding_)?A\.")
_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B\.")


@dataclass
class Snapshot:
    """CPU copies of a model's weights at one moment, by `named_parameters` / `named_buffers` name.

    tensors: the copied parameters and floating-point buffers.
    fingerprints: for each parameter not copied (frozen when the snapshot was taken), its sum and sum of absolute
        values (16 bytes instead of the tensor), so a later snapshot can check it really stayed unchanged.
    """

    tensors: dict[str, torch.Tensor]
    fingerprints: dict[str, tuple[float, float]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class WiseFTSweep:
    """What `wise_ft_sweep` measured: `curve` is one {"alpha": α, **metrics} record per α, in the order given;
    `alpha` the chosen α (the model is left there); `select` the metric it was chosen on."""

    curve: list[dict]
    alpha: float
    select: str

    def to_dict(self) -> dict:
        return {"wise_ft_alpha": self.alpha, "wise_ft_select": self.select, "wise_ft_curve": self.curve}


def _fingerprint(tensor: torch.Tensor) -> tuple[float, float]:
    values = tensor.detach().double()
    return values.sum().item(), values.abs().sum().item()


@torch.no_grad()
def snapshot(model: nn.Module, *, trainable_only: bool = True) -> Snapshot:
    """Copy to CPU what training may change: the parameters that require grad (all of them with
    `trainable_only=False`) and every floating-point buffer (BatchNorm statistics of trained layers move too).

    Why only the trainable parameters: a frozen parameter gets no gradient, so neither the optimizer nor weight
    decay touch it and (1 − α)·w + α·w = w at every α; copying it would cost memory (a whole text tower, say) for
    nothing. Take the start snapshot after `apply_strategy`, when requires_grad says what will train; the frozen
    rest is fingerprinted, and `interpolate` refuses a model whose frozen weights moved or whose trainable set
    grew since (e.g. a second stage unfreezing a tower: snapshot with `trainable_only=False` then).
    """
    _refuse_merged_adapters(model)
    tensors, fingerprints = {}, {}
    for name, param in model.named_parameters():
        if param.requires_grad or not trainable_only:
            tensors[name] = param.detach().to("cpu", copy=True)
        else:
            fingerprints[name] = _fingerprint(param)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            tensors[name] = buffer.detach().to("cpu", copy=True)
    return Snapshot(tensors, fingerprints)


def _refuse_merged_adapters(model: nn.Module) -> None:
    # A merged adapter lives in the base weight: scaling its B would no longer change the model.
    for name, module in model.named_modules():
        if getattr(module, "merged_adapters", None):
            raise ValueError(f"WiSE-FT: the LoRA adapter of {name} is merged; interpolate before merging it.")


def _check_comparable(model: nn.Module, start: Snapshot, finetuned: Snapshot) -> None:
    if start.tensors.keys() != finetuned.tensors.keys():
        missing = sorted(set(start.tensors) ^ set(finetuned.tensors))[:5]
        raise ValueError(
            f"WiSE-FT: the start and fine-tuned snapshots hold different weights (e.g. {missing}): a parameter was "
            "frozen or unfrozen in between; take the start snapshot with trainable_only=False."
        )
    for name, value in start.fingerprints.items():
        now = finetuned.fingerprints.get(name)
        # Summation order differs across devices (the start may be taken on CPU, the end on GPU): tolerate
        # rounding at 1e-9 of the magnitude; one optimizer step moves a weight by far more.
        tol = 1e-9 * (1.0 + value[1])
        if now is None or abs(now[0] - value[0]) > tol or abs(now[1] - value[1]) > tol:
            raise ValueError(
                f"WiSE-FT: {name} was frozen at the start snapshot but changed during training; take the start "
                "snapshot with trainable_only=False (or after the strategy that trains it is applied)."
            )
    for name, tensor in start.tensors.items():
        # peft starts every B at zero (ΔW = 0); a different start could not be reached by scaling B.
        if _LORA_B.search(name) and tensor.count_nonzero():
            raise ValueError(
                f"WiSE-FT: LoRA factor {name} is not zero at the start, so scaling it cannot interpolate the "
                "adapter's delta; take the start snapshot right after get_peft_model (default init_lora_weights)."
            )
    _refuse_merged_adapters(model)
    weights = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    unknown = [name for name in start.tensors if name not in weights]
    if unknown:
        raise ValueError(f"WiSE-FT: the snapshot names weights this model does not have, e.g. {unknown[:3]}")


@torch.no_grad()
def interpolate(model: nn.Module, start: Snapshot, finetuned: Snapshot, alpha: float) -> nn.Module:
    """Set `model`'s weights, in place, to (1 − α)·start + α·finetuned (LoRA: B factors scaled, A factors kept at
    their fine-tuned value) and return it. α = 0 and α = 1 copy the snapshots exactly, so a sweep can always go
    back to the fine-tuned model; values in between are computed in float32 and cast to the weight's dtype.
    Integer buffers (BatchNorm's num_batches_tracked, position ids) are never touched."""
    _check_comparable(model, start, finetuned)
    alpha = float(alpha)
    weights = dict(model.named_parameters())
    weights.update(model.named_buffers())
    for name, tuned in finetuned.tensors.items():
        target = weights[name]
        if alpha == 1.0 or _LORA_A.search(name):
            value = tuned
        elif alpha == 0.0:
            value = start.tensors[name]
        else:
            value = torch.lerp(start.tensors[name].float(), tuned.float(), alpha)
        target.copy_(value.to(target.device, target.dtype))
    return model


def _lookup(metrics: Mapping, select: str):
    """`select` is a key of `metrics`, or a "set/metric" path into a nested dict."""
    if select in metrics:
        return metrics[select]
    node = metrics
    for part in select.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(
                f"WiSE-FT: {select!r} is not among the measured metrics {sorted(metrics)}; name one of them "
                "(or 'set/metric' for nested results)."
            )
        node = node[part]
    return node


def wise_ft_sweep(
    model: nn.Module,
    start: Snapshot,
    alphas: Iterable[float],
    measure: Callable[[], Mapping],
    *,
    select: str = "eval_accuracy",
    greater_is_better: bool = True,
    finetuned: Snapshot | None = None,
) -> WiseFTSweep:
    """Measure the fine-tuned `model` at each α of `alphas` (one `measure()` call per α, nothing more) and leave it
    at the α whose `select` metric is best (the first of equals, in the order given: 0, 0.1, ... prefers the α
    closest to the starting model on a tie).

    `measure` returns a metrics dict, e.g. `lambda: trainer.evaluate(eval_sets)` with the validation set and every
    OOD set; `select` names the metric chosen on (a key, or "set/metric" for nested dicts): validation by default,
    or a held-out OOD validation set's (never a test set's). `finetuned` defaults to a snapshot taken now, with the
    same weights as `start`.
    """
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("WiSE-FT: no alphas to sweep")
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"WiSE-FT: alphas must lie in [0, 1] (0 = start, 1 = fine-tuned), got {bad}")
    if finetuned is None:
        finetuned = _snapshot_like(model, start)
    curve, best, best_score = [], None, None
    for alpha in alphas:
        interpolate(model, start, finetuned, alpha)
        metrics = dict(measure())
        curve.append({"alpha": alpha, **metrics})
        score = float(_lookup(metrics, select))
        better = best_score is None or (score > best_score if greater_is_better else score < best_score)
        if better and not math.isnan(score):
            best, best_score = alpha, score
    if best is None:
        raise ValueError(f"WiSE-FT: {select!r} was NaN at every alpha")
    interpolate(model, start, finetuned, best)
    return WiseFTSweep(curve=curve, alpha=best, select=select)


@torch.no_grad()
def _snapshot_like(model: nn.Module, start: Snapshot) -> Snapshot:
    """The weights `start` holds, as they are now, plus the fingerprints of the rest."""
    weights = dict(model.named_parameters())
    weights.update(model.named_buffers())
    tensors = {name: weights[name].detach().to("cpu", copy=True) for name in start.tensors if name in weights}
    fingerprints = {name: _fingerprint(weights[name]) for name in start.fingerprints if name in weights}
    return Snapshot(tensors, fingerprints)


# ---- the run protocol's WiSE-FT (mm_hf.run.train_and_evaluate, --wise_ft_alphas / --wise_ft_select) ----

# Trainer.evaluate's bookkeeping, not measurements of the model: left out of the α curve.
_SPEED_KEYS = ("runtime", "samples_per_second", "steps_per_second")


class WiseFT:
    """One run's WiSE-FT: the start snapshot taken before any training (`start`), the α sweep after it (`sweep`).

    Each α is measured with `trainer.evaluate` on every set of `sets` (validation and the OOD sets, by name) and
    chosen on `select`'s headline metric (`--metric_for_best_model`, default accuracy). The held-out split is
    measured once at α = 1 (`finetuned_<key>_*`); the protocol measures it again at the chosen α.
    """

    def __init__(self, trainer, measure, sets: dict, alphas: list[float], select: str, metric: str, greater: bool):
        self.trainer, self.measure, self.sets, self.alphas = trainer, measure, sets, alphas
        self.select, self.metric, self.greater = select, metric, greater
        self.start_weights = snapshot(trainer.model)

    @classmethod
    def start(cls, trainer, measure, datasets: dict, ft_args, extra_sets: dict | None = None) -> "WiseFT | None":
        """None without --wise_ft_alphas; else the snapshot of the model as the strategy left it (call before any
        training: after `apply_strategy`, so requires_grad says what will train)."""
        alphas = getattr(ft_args, "wise_ft_alphas", None)
        if not alphas:
            return None
        if not isinstance(trainer_measure(measure), TrainerMeasure):
            raise UserError(
                f"--wise_ft_alphas needs a classifier's evaluation (Trainer metrics); this recipe measures with "
                f"{type(measure).__name__}: drop --wise_ft_alphas"
            )
        sets = {"validation": datasets["validation"]} if "validation" in datasets else {}
        for name, dataset in (extra_sets or {}).items():
            if name in sets:
                raise UserError(f"--wise_ft_alphas: an OOD set may not be named {name!r} (the validation split is)")
            sets[name] = dataset
        select = ft_args.wise_ft_select
        if select not in sets:
            raise UserError(
                f"--wise_ft_select {select}: no such evaluation set; choose α on one of {sorted(sets) or 'none'} "
                "(validation: --validation_dir/--validation_file/--train_val_split; an OOD set: --ood_dir NAME=PATH)"
            )
        args = trainer.args
        # The run's own criterion: --metric_for_best_model, else the measure's (a multi-task fusion model: its loss)
        best = getattr(getattr(trainer_measure(measure), "metrics", None), "best_metric", None)
        metric = (args.metric_for_best_model or (best() if callable(best) else "accuracy")).removeprefix("eval_")
        greater = args.greater_is_better if args.metric_for_best_model else True
        if greater is None:
            greater = not metric.endswith("loss")
        return cls(trainer, trainer_measure(measure), sets, alphas, select, metric, bool(greater))

    def _measure_sets(self) -> dict:
        return measure_sets(self.trainer, self.sets)

    def sweep(self, split: str, key: str) -> dict:
        """After training: the held-out split at α = 1, then the α curve; leaves the model at the chosen α and returns
        what all_results.json records (`wise_ft_alpha`, `wise_ft_select`, `wise_ft_curve`, `finetuned_<key>_*`)."""
        finetuned = self.measure.before(split, f"finetuned_{key}")
        result = wise_ft_sweep(
            self.trainer.model,
            self.start_weights,
            self.alphas,
            self._measure_sets,
            select=f"{self.select}/{self.metric}",
            greater_is_better=self.greater,
        )
        for point in result.curve:
            logger.info(
                "WiSE-FT alpha=%.2f: %s",
                point["alpha"],
                ", ".join(f"{name} {point[name].get(self.metric, float('nan')):.4f}" for name in self.sets),
            )
        logger.info("WiSE-FT: alpha=%s chosen on %s", result.alpha, result.select)
        return {**finetuned, **result.to_dict()}


def trainer_measure(measure):
    """The Trainer-based measure (mm_hf.measures.TrainerMeasure) inside `measure`, which may wrap it (`.measure`, as
    the shifted-set measure of mm_hf.evaluate.shifts does): the intermediate models (LP-FT's probe, α = 1) are
    measured on the held-out split by it alone, so a wrapper's before/after keys keep their meaning."""
    while hasattr(measure, "measure"):
        measure = measure.measure
    return measure


def measure_sets(trainer, sets: dict) -> dict:
    """{name: {metric: value}} of the model on each set: a dataset is evaluated by Trainer, a function of the model
    (mm_hf.retention.ZeroShotRetention) is called."""
    out = {}
    for name, dataset in sets.items():
        if callable(dataset):
            out[name] = dataset(trainer.model)
            continue
        metrics = trainer.evaluate(dataset, metric_key_prefix=name)
        out[name] = {
            k.removeprefix(f"{name}_"): v
            for k, v in metrics.items()
            if k.startswith(f"{name}_") and not k.endswith(_SPEED_KEYS)
        }
    return out


def _value(results: dict, key: str):
    value = results.get(key)
    return None if value is None else float(value)


def format_robustness_report(results: dict, key: str, before_label: str, metric: str = "accuracy") -> str | None:
    """The Markdown report of a robust fine-tuning run (None when it was a plain one): the models the run went
    through (start, LP-FT's probe stage, fine-tuned, WiSE-FT at the chosen α) × the held-out split, validation and
    every OOD set of the α curve, then the α curve itself. Read from all_results.json's keys, so it can be rebuilt
    from a finished run."""
    curve = results.get("wise_ft_curve") or []
    flyp = results.get("finetune_loss") == "flyp"
    if not curve and not flyp and f"lp_{key}_{metric}" not in results:
        return None
    by_alpha = {point["alpha"]: point for point in curve}
    sets = [name for name in (curve[0] if curve else {}) if name != "alpha"]
    split = "test" if key == "test" else "validation"
    header = ["model", f"{split} {metric}"] + [f"{name} {metric}" for name in sets if name != split]
    columns = [name for name in sets if name != split]

    def row(label: str, held_out, point: dict | None):
        cells = [label, held_out] + [(point or {}).get(name, {}).get(metric) for name in columns]
        return [cells[0]] + ["–" if v is None else f"{float(v):.4f}" for v in cells[1:]]

    alpha = results.get("wise_ft_alpha")
    lp = results.get(f"lp_{key}_{metric}") is not None
    rows = [row(before_label, _value(results, f"zeroshot_{key}_{metric}"), by_alpha.get(0.0))]
    if lp:
        lp_point = {name: {metric: results.get(f"lp_{name}_{metric}")} for name in columns}
        lp_point["validation"] = {metric: results.get(f"lp_eval_{metric}")}
        rows.append(row("linear probe (LP-FT stage 1)", _value(results, f"lp_{key}_{metric}"), lp_point))
    tuned = "LP-FT" if lp else "FLYP" if flyp else "fine-tuned"
    if curve:
        rows.append(row(f"{tuned} (α = 1)", _value(results, f"finetuned_{key}_{metric}"), by_alpha.get(1.0)))
        rows.append(row(f"WiSE-FT (α = {alpha:g}, saved)", _value(results, f"{key}_{metric}"), by_alpha.get(alpha)))
    else:
        rows.append(row(f"{tuned} (saved)", _value(results, f"{key}_{metric}"), None))
    lines = [_markdown_table(header, rows)]
    if curve:
        lines.append(
            f"\nWiSE-FT curve: α chosen on {results.get('wise_ft_select')} "
            f"(α = 0: the starting model, α = 1: the fine-tuned one)\n"
        )
        curve_header = ["α"] + [f"{name} {metric}" for name in sets]
        curve_rows = [
            [f"{p['alpha']:g}" + (" ←" if p["alpha"] == alpha else "")]
            + [_fmt(p.get(name, {}).get(metric)) for name in sets]
            for p in curve
        ]
        lines.append(_markdown_table(curve_header, curve_rows))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
    lines = []
    for cells in [header, rule, *rows]:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("| " + " | ".join(padded) + " |")
    return "\n".join(lines) + "\n"
