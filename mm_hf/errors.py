"""Mistakes a user can fix, and the recipes' entry point that reports them as one paragraph instead of a traceback.

Validation code raises `UserError` (or a subclass: `DataError` for bad data, `BadSampleError` for unusable
files) for an anticipated mistake, with a message that names the culprit (file, folder, flag, row) and the
fix. A recipe ends with `if __name__ == "__main__": run_cli(main)`, which prints such an error (or a Hub id
the Hub does not have) on stderr and exits with status 2 (argparse's status for bad arguments), before any
training. Anything else is a bug or an environment problem and keeps its traceback. `--traceback` (declared on every recipe's FinetuneArguments;
TrainingArguments already owns `--debug`) or `MM_HF_DEBUG=1` shows the traceback of user errors too.

`UserError` subclasses `ValueError`, so code catching `ValueError` keeps working.
"""

import argparse
import os
import sys

import yaml

EXIT_USER_ERROR = 2  # argparse exits with 2 on a bad flag; a bad file or value is the same kind of mistake


class UserError(ValueError):
    """An anticipated mistake in the user's input; the message says what is wrong, where, and the fix."""


class DataError(UserError):
    """Bad input data, raised before training starts; the message names the file, folder or column."""


def names_missing_hub_repo(error: BaseException) -> bool:
    """Whether `error` comes from a Hub id (model or dataset) or revision the Hub does not have: a mistyped id.

    transformers re-raises huggingface_hub's RepositoryNotFoundError / RevisionNotFoundError as an OSError whose
    message already names the id and the fix (a token for a private repo); only the traceback is noise.
    """
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
            return True
        if type(error).__name__ == "DatasetNotFoundError":  # datasets' own, for --dataset_name
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def traceback_requested(argv) -> bool:
    """Whether MM_HF_DEBUG=1 is set, or `--traceback` is on: in `argv` (alone or with a true value), else in --config.

    Read from `argv` directly because the error may come from parsing the arguments themselves.
    """
    if _true(os.environ.get("MM_HF_DEBUG")):
        return True
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    pre.add_argument("--traceback", nargs="?", const="true", default=None)
    pre.add_argument("--config", default=None)
    try:
        known, _ = pre.parse_known_args(list(argv))
    except argparse.ArgumentError:  # e.g. a trailing --config: the recipe's own parser reports it
        return False
    if known.traceback is not None:
        return _true(known.traceback)
    try:
        with open(known.config) as f:
            return _true((yaml.safe_load(f) or {}).get("traceback"))
    except (TypeError, OSError, AttributeError, yaml.YAMLError):  # no --config, or one parse_args refuses anyway
        return False


def _true(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y")


def run_cli(main, argv=None):
    """Run `main(argv)`; a `UserError` becomes one paragraph on stderr and exit status 2 (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except Exception as error:
        if not (isinstance(error, UserError) or names_missing_hub_repo(error)) or traceback_requested(argv):
            raise
        prog = os.path.basename(sys.argv[0]) or "mm_hf"
        print(f"{prog}: error: {error}\n(add --traceback to see where this was raised)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
