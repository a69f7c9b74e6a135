"""Shifted test sets and corruptions measured at the end of a run (before and after fine-tuning), as
`python -m mm_hf.evaluate` measures them: `--ood_dir` / `--ood_file NAME=PATH`, `--robustness`."""

import re
from dataclasses import dataclass, field

from ..errors import UserError

# `--robustness` with no value: one corruption per ImageNet-C family (noise, blur, weather, digital) for images; for
# audio one additive, one level, one codec-like perturbation; for text both perturbations there are.
DEFAULT_ROBUSTNESS = {
    "image": "gaussian_noise,defocus_blur,brightness,jpeg_compression",
    "audio": "noise,gain,clipping",
    "text": "typos,word_dropout",
}


@dataclass
class RobustnessArguments:
    ood_dir: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=FOLDER, repeatable: a shifted test set as class folders (labels seen in training), scored "
            "before and after fine-tuning (`ood_<NAME>_*` in all_results.json, rows of the before/after table).",
            "action": "extend",
        },
    )
    ood_file: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=FILE, repeatable: a shifted test set as CSV/JSONL with the run's input and label columns.",
            "action": "extend",
        },
    )
    robustness: str | None = field(
        default=None,
        metadata={
            "help": "Corrupt the test split and score it before and after fine-tuning: a comma-separated list of "
            "mm_hf.corruptions names, 'all', or no value for one per family (images: "
            f"{DEFAULT_ROBUSTNESS['image']}; audio: {DEFAULT_ROBUSTNESS['audio']}; text: "
            f"{DEFAULT_ROBUSTNESS['text']}). Each corruption and severity is one more pass over the test split.",
            "nargs": "?",
            "const": "default",
        },
    )
    robustness_severities: str = field(
        default="3",
        metadata={
            "help": "Severities (1..5, comma-separated) of --robustness; the middle one by default, 1,2,3,4,5 for "
            "the whole curve (five times the passes)."
        },
    )

    def shifted_sets(self) -> dict[str, tuple[str, str]]:
        """NAME -> (flag, path) of every --ood_dir / --ood_file, in order; refuses a malformed or repeated NAME."""
        out = {}
        for flag, values in (("--ood_dir", self.ood_dir), ("--ood_file", self.ood_file)):
            for value in values or []:
                name, sep, path = value.partition("=")
                if not sep or not name or not path:
                    raise UserError(f"{flag} {value!r}: expected NAME=PATH, e.g. {flag} sketches=data/sketch_test")
                if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                    raise UserError(f"{flag} {value!r}: NAME becomes part of metric keys (ood_NAME_accuracy): use "
                                    "letters, digits, _ and - only")  # fmt: skip
                if name in out:
                    raise UserError(f"{flag} {value!r}: the name {name!r} is already given to another shifted set")
                if name == "test":
                    raise UserError(f"{flag} {value!r}: 'test' names the run's own test split; choose another name")
                out[name] = (flag, path)
        return out

    def corruption_spec(self, modality: str) -> str | None:
        """The --robustness value as a corruption list for `modality` (None: no sweep)."""
        if self.robustness is None:
            return None
        return DEFAULT_ROBUSTNESS[modality] if self.robustness == "default" else self.robustness
