"""`parse_args` (YAML defaults -> CLI overrides), which flags the user set, and arguments as one flat dict."""

import argparse
import dataclasses
import difflib
import sys

import yaml
from transformers import HfArgumentParser

from ..errors import UserError

# TrainingArguments says of --resume_from_checkpoint only "Not directly used by Trainer"; the recipes use it so.
RECIPE_HELP = {
    "resume_from_checkpoint": "Continue an interrupted run in its own --output_dir (no --overwrite_output_dir "
    "needed): auto = its last complete checkpoint, or a fresh start if there is none (pass it on every "
    "launch of a preemptible job; a finished run is refused, not retrained); or a checkpoint-N folder.",
}


def parse_args(dataclass_types, argv=None, defaults: dict | None = None):
    """Parse `argv` into `dataclass_types`, with `--config file.yaml` supplying defaults.

    Precedence: CLI > YAML > `defaults` (field name -> value, the recipes' own) > dataclass defaults. Unknown YAML
    keys are an error naming the file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # The default usage line lists every TrainingArguments flag (~200 lines) above each argument error.
    parser = HfArgumentParser(dataclass_types, usage="%(prog)s [--flag value ...] (every flag: --help)")
    parser.add_argument("--config", default=None, help="YAML file of defaults for any flag below; the CLI wins.")
    for action in parser._actions:  # TrainingArguments flags whose meaning the recipes define (mm_hf.run.start_run)
        action.help = RECIPE_HELP.get(action.dest, action.help)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser.set_defaults(**(defaults or {}))
    if known.config:
        parser.set_defaults(**_load_yaml_defaults(known.config, parser))
    try:
        *outputs, extra = parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    except UserError:
        raise
    except ValueError as e:  # the dataclasses' own checks (e.g. TrainingArguments.__post_init__) on the flags' values
        raise UserError(f"invalid arguments: {e}") from e
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # parse_args_into_dataclasses returns a trailing Namespace holding the non-dataclass `--config`.
    return tuple(o for o in outputs if dataclasses.is_dataclass(o))


def explicit_flags(argv, dataclass_types) -> set[str]:
    """Names (dataclass field names) of the flags the user set: on the command line `argv` or as keys of the
    YAML file given with `--config`. Everything else holds its default, which a recipe may then choose per
    situation (e.g. per --finetune_strategy) without overriding a user's choice.

    Flags are matched by their exact option strings (`--flag`, `--flag=value`, `--no_flag`, dashed forms, aliases such
    as `--image_column_name`), and YAML keys by either spelling;
    call it after `parse_args`, which has already refused unknown flags and YAML keys.
    """
    parser = HfArgumentParser(dataclass_types)
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    argv = list(argv)
    names = {dests[token.split("=", 1)[0]] for token in argv if token.split("=", 1)[0] in dests}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    if config:
        names |= set(_load_yaml_defaults(config, parser))
    return names - {"help"}


def _load_yaml_defaults(path: str, parser: HfArgumentParser) -> dict:
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must be a mapping of flag: value, got {type(values).__name__}")
    known = {a.dest for a in parser._actions} - {"help", "config"}
    # A key may be a flag's alias (image_column_name for image_column); `no_<flag>` switches are no keys.
    aliases = {
        option[2:]: action.dest
        for action in parser._actions
        if action.dest in known and not isinstance(action, argparse._StoreFalseAction)
        for option in action.option_strings
        if option.startswith("--") and "-" not in option[2:]
    }
    unknown = [k for k in values if k not in aliases]
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise UserError(f"unknown key(s) in --config {path}: {', '.join(hints)}")
    resolved = {}
    for key, value in values.items():
        dest = aliases[key]
        if dest in resolved:
            spellings = " and ".join(k for k in values if aliases[k] == dest)
            raise UserError(f"--config {path} sets {dest} twice ({spellings} are one flag): keep one")
        resolved[dest] = value
    return resolved


def args_to_dict(*arg_objects) -> dict:
    """Resolved arguments as one flat, YAML-safe dict; secrets (hub tokens) are left out."""
    out = {}
    for obj in arg_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        out.update({k: v for k, v in values.items() if "token" not in k})
    return out
