"""The state of a run's output folder: unfinished (marked), finished, or resumable from a complete checkpoint.

A training run writes `run_unfinished.json` into its output folder when training starts and removes it as the very
last step of `mm_hf.outputs.save_run`, after every result file and the card. A folder holding the marker is therefore
the folder of a run that was killed, crashed or is still running: `mm_hf.publish` refuses it, and
`--resume_from_checkpoint auto` continues it from its last complete checkpoint without --overwrite_output_dir.

A checkpoint is complete when its `trainer_state.json` reads back: Trainer writes that file last (after the model,
optimizer, scheduler and RNG states), so a run killed while saving leaves a folder without it, or with a torn one.
"""

import datetime
import json
import logging
import os
import re

from .atomic_files import atomic_write
from .errors import UserError

logger = logging.getLogger(__name__)

UNFINISHED_MARKER = "run_unfinished.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def mark_unfinished(output_dir: str, resumed_from: str | None = None) -> None:
    """Write the marker (main process only): the folder holds a run that has not finished writing its outputs."""
    os.makedirs(output_dir, exist_ok=True)
    record = {
        "status": "unfinished",
        "why": "training started here and the run has not finished writing this folder (killed, crashed or still "
        "running); resume it with the same command plus --resume_from_checkpoint auto",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "resumed_from": resumed_from,
    }
    with atomic_write(os.path.join(output_dir, UNFINISHED_MARKER)) as f:
        json.dump(record, f, indent=2)


def mark_finished(output_dir: str) -> None:
    """Remove the marker: every output of the run is written."""
    try:
        os.remove(os.path.join(output_dir, UNFINISHED_MARKER))
    except FileNotFoundError:
        pass


def is_unfinished(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, UNFINISHED_MARKER))


def refuse_unfinished(path: str, use: str) -> None:
    """Refuse to `use` (e.g. "export") the output folder of a run still marked unfinished: the model files it holds,
    if any, may be half-written or an earlier run's (a run restarted in the same folder was killed)."""
    if os.path.isdir(path) and is_unfinished(path):
        raise UserError(
            f"{path} holds an unfinished run ({UNFINISHED_MARKER}: training was interrupted, crashed or is still "
            f"running), so its model files may be partial or an earlier run's. Finish it (rerun the recipe with the "
            f"same flags plus --resume_from_checkpoint auto), or {use} one of its checkpoint-* folders instead"
        )


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete Trainer checkpoint, or None when it is one."""
    if not os.path.isdir(path):
        return "no such folder"
    state = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(state):
        return f"no {TRAINER_STATE} (Trainer writes it last: the save was interrupted)"
    try:
        with open(state) as f:
            step = json.load(f)["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE} is torn or unreadable"
    if not isinstance(step, int):
        return f"{TRAINER_STATE} holds no global_step"
    return None


def checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, by step (complete or not)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), n) for n in os.listdir(output_dir) if (m := _CHECKPOINT.match(n))]
    return [os.path.join(output_dir, n) for _, n in sorted(found) if os.path.isdir(os.path.join(output_dir, n))]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint with the highest step, skipping (and logging) incomplete ones."""
    for path in reversed(checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, problem)
    return None


def resolve_resume(output_dir: str, resume: str | None, overwrite: bool) -> str | None:
    """Check that a training run may write into `output_dir` and return the checkpoint to resume from (or None).

    - `resume` None: the folder must be missing or empty, unless `overwrite` (--overwrite_output_dir).
    - `resume` "auto": the last complete checkpoint of an unfinished run in `output_dir`; a fresh start when the
      folder is missing or empty or the unfinished run saved no complete checkpoint; a finished run is refused
      (nothing to resume) unless `overwrite`, which starts afresh.
    - `resume` a path: a complete checkpoint; the folder must be missing, empty or hold an unfinished run.
    """
    exists = os.path.isdir(output_dir) and bool(os.listdir(output_dir))
    unfinished = is_unfinished(output_dir)
    again = (
        "pass --overwrite_output_dir to write into it anyway, or choose another --output_dir"
        if not unfinished
        else "it holds an unfinished run: continue it with --resume_from_checkpoint auto, or pass "
        "--overwrite_output_dir to start afresh in it"
    )
    if resume is None:
        if exists and not overwrite:
            raise UserError(f"output folder {output_dir} exists and is not empty; {again}")
        return None
    if resume == "auto":
        if not exists:
            logger.info("--resume_from_checkpoint auto: %s is empty, starting afresh", output_dir)
            return None
        if not unfinished:
            if not overwrite:
                raise UserError(
                    f"--resume_from_checkpoint auto: {output_dir} holds a finished run (no {UNFINISHED_MARKER}), "
                    "so there is nothing to resume; pass --overwrite_output_dir to train again in it, or choose "
                    "another --output_dir"
                )
            logger.info("--resume_from_checkpoint auto: %s holds a finished run; starting afresh", output_dir)
            return None
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            logger.info(
                "--resume_from_checkpoint auto: the unfinished run saved no complete checkpoint; starting afresh"
            )
        else:
            logger.info("--resume_from_checkpoint auto: resuming from %s", checkpoint)
        return checkpoint
    problem = checkpoint_problem(resume)
    if problem is not None:
        raise UserError(f"--resume_from_checkpoint {resume} is not a complete checkpoint: {problem}")
    if exists and not unfinished and not overwrite:
        raise UserError(f"output folder {output_dir} exists and is not empty; {again}")
    return resume
