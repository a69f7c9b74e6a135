"""Hyperparameter sweeps on an existing engine: `--hp_search optuna|ray --n_trials N --hp_space FILE.yaml` through
`Trainer.hyperparameter_search`, the same for every recipe (`mm_hf.run.train_and_evaluate` calls `search`).

Each trial trains a fresh copy of the untouched model (`model_init`) with the trial's training flags and is scored on
the validation split (`metric_for_best_model`, by default the recipe's own criterion, as for early stopping); the
test split is never looked at. The best trial's flags are then set on the run and it is retrained with the same seed
(on CPU it reproduces the trial's validation score exactly), so the output folder is a normal one; its
`all_results.json` holds the trials table under `hp_search`, next to `hp_search.md` and `hp_search.png` (in the card).

The search space, one entry per TrainingArguments flag:

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    num_train_epochs: {type: int, low: 2, high: 10}
    per_device_train_batch_size: {type: categorical, choices: [8, 16, 32]}

Optuna (`pip install 'mm-hf[sweeps]'`) runs the trials one after the other in this process (TPE seeded by --seed;
its default median pruner stops a trial whose validation score at an evaluation falls behind the earlier trials').
With `--hp_storage sqlite:///sweep.db` (any Optuna storage URL) the study, named after the output folder, is kept
there as each trial ends: a sweep killed mid-way, relaunched with the same command plus --resume_from_checkpoint
auto, keeps its finished trials and runs only the missing ones (a trial the kill interrupted is marked failed, so
one sweep process per study).
Ray Tune (`pip install 'mm-hf[sweeps-ray]'`) runs them as Ray actors, one CPU (and one GPU, if the run has one)
each, as many at once as the cluster has room for. Without a cluster it starts a local Ray instance for the sweep
and stops it afterwards. With `--ray_address` (or RAY_ADDRESS) it joins a running cluster and the trials run on
every machine of it: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others, then the
recipe with `--ray_address auto` on the head. Each trial unpickles the Trainer (its datasets included) on its
machine, and Ray Tune keeps its trial records under OUTPUT_DIR/ray_tune, so on a cluster the data and the output
folder must be on a filesystem every machine mounts at the same path (NFS), as Ray Tune requires for multi-node
checkpoints since Ray 2.7.
"""

import contextlib
import copy
import dataclasses
import importlib.util
import logging
import os
import shutil

import yaml
from transformers import TrainingArguments

from .atomic_files import atomic_path, write_text_atomic
from .errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("optuna", "ray")
_INSTALL = {"optuna": "pip install 'mm-hf[sweeps]' (optuna)", "ray": "pip install 'mm-hf[sweeps-ray]' (ray[tune])"}
_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
# Flags a trial must not change: where the run writes, what it does, and how it is launched.
_NOT_SEARCHABLE = {"output_dir", "do_train", "do_eval", "do_predict", "resume_from_checkpoint", "push_to_hub"}
RAY_FOLDER = "ray_tune"  # Ray Tune's experiment folder (trial records, reported checkpoints) in --output_dir


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched flag: a float or int range (`log` for a log-uniform one, `step` for a grid) or `choices`."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None


def check_sweep_flags(ft_args, training_args) -> None:
    """Refuse, before any data is loaded, a sweep this run cannot make (called by `mm_hf.run.start_run`)."""
    if not ft_args.hp_search:
        for flag in ("hp_space", "n_trials"):
            if flag in training_args.explicit_flags:
                raise UserError(f"--{flag} configures a sweep: add --hp_search optuna or --hp_search ray")
    if ft_args.ray_address and ft_args.hp_search != "ray":
        raise UserError("--ray_address names the Ray cluster for the trials of --hp_search ray: add it")
    if ft_args.hp_storage and ft_args.hp_search != "optuna":
        raise UserError("--hp_storage keeps the trials of --hp_search optuna (an Optuna storage URL): add it")
    if not ft_args.hp_search:
        return
    if ft_args.hp_search not in BACKENDS:
        raise UserError(f"--hp_search must be one of {', '.join(BACKENDS)}; got {ft_args.hp_search!r}")
    require_backend(ft_args.hp_search)
    if not ft_args.hp_space:
        raise UserError("--hp_search needs --hp_space FILE.yaml: the flags to search and their ranges")
    load_hp_space(ft_args.hp_space)
    if ft_args.n_trials < 1:
        raise UserError(f"--n_trials must be at least 1; got {ft_args.n_trials}")
    if not training_args.do_train:
        raise UserError("--hp_search trains one model per trial: add --do_train")
    if ft_args.hp_search == "ray" and training_args.world_size > 1:
        raise UserError(
            f"--hp_search ray runs each trial as one Ray actor, not across the {training_args.world_size} processes "
            "of this launch: start the recipe as a single process (python recipes/...); Ray spreads the trials "
            "over the cluster's CPUs and GPUs"
        )
    if training_args.resume_from_checkpoint:
        raise UserError(
            f"--hp_search cannot resume from {training_args.resume_from_checkpoint}: each trial starts from the "
            "untouched model. Drop --resume_from_checkpoint and pass --overwrite_output_dir to run the sweep again"
        )


def require_backend(backend: str) -> None:
    module = "ray.tune" if backend == "ray" else backend
    if importlib.util.find_spec(backend) is None or importlib.util.find_spec(module) is None:
        raise UserError(f"--hp_search {backend} needs {module}, which is not installed: {_INSTALL[backend]}")


def load_hp_space(path: str) -> dict[str, Param]:
    """The search space of `path` (format in the module docstring); errors name the file and the entry."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read --hp_space {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--hp_space {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"--hp_space {path} must map training flags to ranges, e.g. learning_rate: {{type: float, ...}}"
        )
    return {name: _param(path, name, spec) for name, spec in raw.items()}


def _param(path: str, name: str, spec) -> Param:
    where = f"--hp_space {path}: {name}"
    if name not in _TRAINING_FIELDS:
        raise UserError(
            f"{where} is not a TrainingArguments flag; a sweep searches training flags only (every trial trains "
            "the same model, built from the other flags)"
        )
    if name in _NOT_SEARCHABLE:
        raise UserError(f"{where} cannot differ between trials")
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise UserError(f"{where} needs type: float, int or categorical (got {spec!r})")
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: a categorical entry needs a non-empty list of choices")
        return Param(name, "categorical", choices=tuple(choices))
    cast = float if spec["type"] == "float" else int
    try:
        low, high = cast(spec["low"]), cast(spec["high"])
        step = cast(spec["step"]) if spec.get("step") is not None else None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where} needs numeric low and high (got {spec.get('low')!r}, {spec.get('high')!r})") from None
    log = bool(spec.get("log", False))
    if log and step is not None:  # Optuna samples either on a log scale or on a grid, not both
        raise UserError(f"{where}: log and step exclude each other")
    if not low < high or (log and low <= 0):
        raise UserError(f"{where}: need low < high{' and low > 0 for log' if log else ''} (got {low}, {high})")
    return Param(name, spec["type"], low, high, log, step)


def optuna_space(space: dict[str, Param]):
    """`hp_space` for Trainer's optuna backend: the trial's suggestion for every entry."""

    def suggest(trial) -> dict:
        values = {}
        for p in space.values():
            if p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
        return values

    return suggest


def ray_space(space: dict[str, Param]):
    """`hp_space` for Trainer's Ray Tune backend: a `ray.tune` distribution per entry."""
    from ray import tune

    def distribution(p: Param):
        if p.type == "categorical":
            return tune.choice(list(p.choices))
        if p.type == "int":
            return tune.lograndint(p.low, p.high + 1) if p.log else tune.qrandint(p.low, p.high, p.step or 1)
        if p.step:
            return tune.quniform(p.low, p.high, p.step)
        return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)

    return lambda trial: {p.name: distribution(p) for p in space.values()}


def search(trainer, ft_args, early_stopping=None) -> dict:
    """Run the trials, set the best trial's flags on `trainer.args` and a `model_init` that gives the untouched model,
    so the caller's `trainer.train()` retrains the best trial. Returns the summary recorded as `hp_search`.

    `early_stopping` (the run's EarlyStoppingCallback, if any) starts each trial with a fresh patience count.
    """
    backend, space = ft_args.hp_search, load_hp_space(ft_args.hp_space)
    args = trainer.args
    metric = args.metric_for_best_model
    objective = metric if metric.startswith("eval_") else f"eval_{metric}"
    direction = "maximize" if args.greater_is_better else "minimize"
    untouched = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model))

    def model_init(trial=None):
        if early_stopping is not None:  # its patience count would carry over from the previous trial
            early_stopping.early_stopping_patience_counter = 0
        return copy.deepcopy(untouched)

    def compute_objective(metrics: dict) -> float:
        if objective not in metrics:
            raise UserError(
                f"--hp_search: the objective {objective} (metric_for_best_model) is not among the validation "
                f"metrics: {', '.join(sorted(k for k in metrics if k.startswith('eval_')))}"
            )
        return metrics[objective]

    trainer.model_init = model_init
    kwargs = {}
    n_trials = ft_args.n_trials
    if backend == "optuna":
        import optuna

        # The study lives in a storage we keep, to read every trial back (Trainer returns only the best); with
        # --hp_storage also across a kill, under the output folder's name.
        storage, study_name, earlier = optuna.storages.InMemoryStorage(), "mm-hf", 0
        if ft_args.hp_storage:
            study_name = os.path.abspath(args.output_dir)
            try:
                storage = optuna.storages.get_storage(ft_args.hp_storage)
            except Exception as e:  # SQLAlchemy's error for a bad URL, a missing driver, an unreachable server
                raise UserError(f"--hp_storage {ft_args.hp_storage} cannot be opened by Optuna: {e}") from None
            left = _trials_left(storage, study_name, n_trials) if args.process_index == 0 else None
            n_trials, earlier = _shared(left, args)
        kwargs = dict(
            # A resumed study's sampler gets another seed: with --seed again it would draw the first trials' flags.
            sampler=optuna.samplers.TPESampler(seed=args.seed + earlier),
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
        )
        space_fn = optuna_space(space)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        space_fn = ray_space(space)
        kwargs = dict(
            search_alg=BasicVariantGenerator(random_state=args.seed),  # the trials' flags repeat with --seed
            # A trial's actor starts by importing torch/transformers and unpickling the Trainer (36 s on 2 busy
            # cores): the next trial reuses it (Trainer resets its state in train(), as for Optuna's in-process runs).
            reuse_actors=True,
            storage_path=os.path.abspath(args.output_dir),
            name=RAY_FOLDER,
        )
    logger.info(
        "--hp_search %s: %d trials over %s, %s %s", backend, ft_args.n_trials, list(space), direction, objective
    )
    with _ray_cluster(ft_args.ray_address) if backend == "ray" else contextlib.nullcontext():
        best = trainer.hyperparameter_search(
            hp_space=space_fn,
            compute_objective=compute_objective,
            n_trials=n_trials,
            direction=direction,
            backend=backend,
            **kwargs,
        )
    summary = None
    if args.process_index == 0:
        if backend == "optuna":
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = [
                {"trial": t.number, "state": t.state.name, "objective": t.value, **t.params} for t in study.trials
            ]
        else:  # ray.tune.ExperimentAnalysis
            trials = [
                {
                    "trial": t.trial_id,
                    "state": t.status,
                    "objective": (t.last_result or {}).get("objective"),
                    **{k: t.config.get(k) for k in space},
                }
                for t in best.run_summary.trials
            ]
        summary = {
            "backend": backend,
            "objective": objective,
            "direction": direction,
            "n_trials": ft_args.n_trials,
            "best_trial": best.run_id if backend == "ray" else int(best.run_id),
            "best_objective": best.objective,
            "best_params": dict(best.hyperparameters),
            "trials": trials,
        }
    summary = _shared(summary, args)
    _remove_trial_folders(args.output_dir, args.process_index)
    _set_flags(trainer, summary["best_params"])
    logger.info("best trial %s (%s %.4g): retraining with %s", summary["best_trial"], objective,
                summary["best_objective"], summary["best_params"])  # fmt: skip
    return summary


def _trials_left(storage, study_name: str, n_trials: int) -> tuple[int, int]:
    """(trials still to run, trials the study holds): its finished (complete or pruned) trials count toward
    `n_trials`, and a trial still marked running was interrupted by the kill of the sweep that ran it (one process
    runs a study): it is marked failed."""
    from optuna.trial import TrialState

    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:  # a new study
        return n_trials, 0
    trials = storage.get_all_trials(study_id, deepcopy=False)
    done = 0
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        done += trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
    left = max(n_trials - done, 0)
    logger.info("--hp_storage: study %s has %d finished trial(s); running %d more", study_name, done, left)
    return left, len(trials)


@contextlib.contextmanager
def _ray_cluster(address: str | None):
    """Ray for the trials: the running cluster at `address` (--ray_address, else RAY_ADDRESS; "auto" = the one
    `ray start` started on this machine), or a local instance for this sweep. One already connected (ray.init by
    the caller) is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address)
        except ConnectionError as e:
            raise UserError(f"--hp_search ray: no Ray cluster at {address!r}: {e}") from None
    else:
        _start_local_ray()
    try:
        yield
    finally:
        ray.shutdown()  # stops the local instance; for a cluster, only disconnects this process


def _start_local_ray(attempts: int = 2) -> None:
    """A local Ray instance, started again once if it fails: its raylet aborts when its agent processes take over
    ~15 s to start (a fixed limit, ray-project/ray#65983), which happened here on 2 cores busy with other work;
    the second start finds their modules in the page cache. No dashboard: the trials table is in all_results.json
    (for the dashboard, start a cluster with `ray start --head` and pass --ray_address auto)."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", include_dashboard=False)
            return
        except Exception as e:  # Ray raises a bare Exception ("The current node timed out during startup")
            ray.shutdown()
            if attempt == attempts:
                raise
            logger.warning("the local Ray instance did not start (%s); starting it again", e)


def _shared(summary: dict | None, args) -> dict:
    """Rank 0's summary on every process (Trainer's optuna search returns the best run on rank 0 only)."""
    if args.world_size == 1:
        return summary
    import torch.distributed as dist

    holder = [summary]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _set_flags(trainer, params: dict) -> None:
    """The best trial's flags on `trainer.args`, cast as Trainer casts a trial's values (`_hp_search_setup`), then
    what that method rebuilds from them: the batch size and the accelerator (gradient accumulation, precision)."""
    for name, value in params.items():
        old = getattr(trainer.args, name)
        setattr(trainer.args, name, type(old)(value) if old is not None else value)
    trainer._train_batch_size = trainer.args.train_batch_size
    trainer.create_accelerator_and_postprocess()


def _remove_trial_folders(output_dir: str, process_index: int) -> None:
    """Trials save their checkpoints in OUTPUT_DIR/run-<trial> (and Ray Tune its records in OUTPUT_DIR/ray_tune);
    the retrained best trial replaces them all, and all_results.json keeps the trials table."""
    if process_index != 0 or not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if (name.startswith("run-") or name == RAY_FOLDER) and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name))


def trials_table(summary: dict) -> str:
    """The trials as a Markdown table (best trial in bold), under a line saying what was compared."""
    names = list(summary["best_params"])
    lines = [
        f"{len(summary['trials'])} trials with {summary['backend']}, compared on the validation split by "
        f"`{summary['objective']}` ({summary['direction']}); the best trial was retrained with the same seed "
        "and is the model of this folder.",
        "",
        "| trial | " + " | ".join(names) + f" | {summary['objective']} |",
        "|---" * (len(names) + 2) + "|",
    ]
    for t in summary["trials"]:
        cells = [str(t["trial"]), *(_cell(t.get(n)) for n in names), _cell(t["objective"])]
        if str(t["trial"]) == str(summary["best_trial"]):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value)


def plot_trials(summary: dict, path: str) -> str:
    """The objective of each trial against each searched flag (log axis for a log range), the best one starred."""
    from matplotlib.figure import Figure  # lazy, and no global pyplot state (as mm_hf.reports)

    names = list(summary["best_params"])
    done = [t for t in summary["trials"] if t["objective"] is not None]
    fig = Figure(figsize=(4 * len(names), 3.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        xs = [t.get(name) for t in done]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positions = xs if numeric else [str(x) for x in xs]
        ax.scatter(positions, [t["objective"] for t in done], color="tab:blue")
        best = [t for t in done if str(t["trial"]) == str(summary["best_trial"])]
        if best:
            x = best[0][name] if numeric else str(best[0][name])
            ax.scatter([x], [best[0]["objective"]], marker="*", s=200, color="tab:orange", label="best (retrained)")
            ax.legend(fontsize=8)
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(summary["objective"])
    fig.suptitle(f"{summary['backend']}: {len(summary['trials'])} trials")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def write_sweep_outputs(output_dir: str, summary: dict) -> None:
    """`hp_search.md` (the trials table, shown in the card) and `hp_search.png`."""
    write_text_atomic(os.path.join(output_dir, "hp_search.md"), trials_table(summary))
    plot_trials(summary, os.path.join(output_dir, "hp_search.png"))
