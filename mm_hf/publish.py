"""Publish a recipe's output folder to the Hugging Face Hub (the one code path for every recipe).

    python -m mm_hf.publish OUTPUT_DIR --hub_model_id user/name [--private] [--adapter_only | --merged]

Recipes call `publish()` at the end of training when given `--push_to_hub`; after a failed push the same
folder is published again with this command, without retraining. The folder of an unfinished run (one that still
holds `run_unfinished.json`: killed, crashed or running; see mm_hf.run_folder) is refused.

What is uploaded is exactly the folder's publishable files: weights as safetensors, configs, code files,
processor/tokenizer files (also the fusion recipes' `image_processor/`, `tokenizer/`, `feature_extractor/`
sub-folders), metrics, reports, plots and the model card; publishable files of an earlier upload that this one
lacks (the adapter after `--merged`, the merged weights after `--adapter_only`) are deleted in the same commit,
other files of the repo are left alone. Pickles (`*.bin`, `*.pt`, optimizer
and scheduler state), `checkpoint-*` folders and `trainer_state.json` stay local. Files are staged in a
temporary folder, where absolute local paths are replaced by their last component and where no token may
appear; the output folder itself is never modified.
"""

import argparse
import fnmatch
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from .cards import RUN_INFO, read_run_info, write_model_card
from .run_folder import UNFINISHED_MARKER, is_unfinished

logger = logging.getLogger(__name__)

PUBLISHABLE = ("*.safetensors", "*.json", "*.py", "*.md", "*.png", "*.txt", "*.yaml", "*.model", "*.tiktoken")
NEVER_PUBLISHED = (
    "trainer_state.json",
    "training_args.bin",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "optimizer*",
    "scheduler*",
    UNFINISHED_MARKER,
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Sub-folders that are part of a model: the fusion recipes' per-modality processors.
PUBLISHABLE_FOLDERS = ("image_processor", "tokenizer", "feature_extractor")
# Large vocabularies are never rewritten: a vocabulary entry is data, not a path.
NOT_SCRUBBED = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
RETRY_BACKOFF_SECONDS = 2.0
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")


class PublishError(RuntimeError):
    """A push that did not happen; the message says why and how to retry."""


def publish(
    output_dir: str,
    hub_model_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    variant: str | None = None,
    commit_message: str | None = None,
    max_retries: int = 4,
) -> str:
    """Upload `output_dir` to the model repo `hub_model_id`; returns the repo URL.

    variant: None publishes the folder as saved; "adapter" requires a LoRA adapter folder; "merged"
    publishes a merged copy of an adapter folder (or the folder itself if it already holds full weights).
    Transient failures (connection errors, 408/429/5xx) are retried `max_retries` times with exponential
    backoff; re-publishing an unchanged folder uploads nothing.
    """
    retry = _retry_command(output_dir, hub_model_id, private, variant)
    if is_unfinished(output_dir):
        raise PublishError(
            f"{output_dir} holds an unfinished run ({UNFINISHED_MARKER}: training was interrupted, crashed or is "
            "still running), so its weights and results may be partial or stale. Finish it first: rerun the recipe "
            "with the same flags plus --resume_from_checkpoint auto"
        )
    if not os.path.isfile(os.path.join(output_dir, "config.json")):
        raise PublishError(f"{output_dir} is not a recipe output folder (no config.json)")
    token = token or get_token()
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mm-hf-publish-") as staging:
        _stage(output_dir, staging, variant, hub_model_id)
        _refuse_secrets(staging, token)
        try:
            url = _with_retries(lambda: api.create_repo(hub_model_id, private=private, exist_ok=True), max_retries)
            repo_id = url.repo_id
            if private:  # create_repo leaves an existing repo's visibility alone
                _with_retries(lambda: api.update_repo_settings(repo_id, private=True), max_retries)
            # Files of a variant published before that this one lacks go in the same commit: a stale
            # adapter_config.json next to merged weights makes transformers load base + adapter instead.
            remote = _with_retries(lambda: api.list_repo_files(repo_id), max_retries)
            staged = set(_staged(staging))
            stale = [f for f in remote if _is_publishable(f) and f not in staged]
            _with_retries(
                lambda: api.upload_folder(
                    repo_id=repo_id,
                    folder_path=staging,
                    commit_message=commit_message
                    or f"Upload {os.path.basename(os.path.normpath(output_dir))} with mm-hf",
                    delete_patterns=[glob.escape(f) for f in stale] or None,
                ),
                max_retries,
            )
        except Exception as error:
            raise PublishError(_explain(error, hub_model_id, output_dir, retry)) from error
    return str(url)


def publish_run(training_args, output_dir: str) -> str:
    """`--push_to_hub` at the end of a recipe: publish with the TrainingArguments' hub settings.

    On failure the message (with the retry command) goes to stderr and the process exits with 1,
    after every local file has been written.
    """
    repo = training_args.hub_model_id or os.path.basename(os.path.normpath(output_dir))
    try:
        url = publish(output_dir, repo, private=training_args.hub_private_repo, token=training_args.hub_token)
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    print(f"Published {output_dir} to {url}")
    return url


def publishable_files(output_dir: str) -> list[str]:
    """Files of `output_dir` that are published, as relative paths: its top-level files and those of the processor
    sub-folders (`PUBLISHABLE_FOLDERS`); other sub-folders such as checkpoints never are."""
    names = []
    for root, _, files in os.walk(output_dir):
        names += [os.path.normpath(os.path.join(os.path.relpath(root, output_dir), n)) for n in files]
    return sorted(n for n in names if _is_publishable(n))


def _is_publishable(name: str) -> bool:
    """Whether the relative path `name` (of an output folder or of a Hub repo) is a file mm-hf publishes."""
    parts = name.replace(os.sep, "/").split("/")
    if len(parts) > 1 and parts[0] not in PUBLISHABLE_FOLDERS:
        return False
    return any(fnmatch.fnmatch(parts[-1], p) for p in PUBLISHABLE) and not any(
        fnmatch.fnmatch(parts[-1], p) for p in NEVER_PUBLISHED
    )


def _stage(output_dir: str, staging: str, variant: str | None, repo_id: str) -> None:
    files = publishable_files(output_dir)
    is_adapter = all(f in files for f in ADAPTER_FILES)
    if variant == "adapter" and not is_adapter:
        raise PublishError(f"{output_dir} holds no LoRA adapter (adapter_config.json + adapter_model.safetensors)")
    if variant == "merged" and is_adapter:
        _save_merged(output_dir, staging)
        files = [f for f in files if f not in ADAPTER_FILES and f != "config.json"]
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
        shutil.copy2(os.path.join(output_dir, name), os.path.join(staging, name))
    if os.path.exists(os.path.join(output_dir, RUN_INFO)):
        saved_as = "merged" if variant == "merged" and is_adapter else None
        write_model_card(
            output_dir, saved_as=saved_as, target_dir=staging, repo_id=repo_id, license=_base_model_license(output_dir)
        )
    for name in _staged(staging):
        if os.path.basename(name) not in NOT_SCRUBBED and name.endswith((".json", ".md", ".yaml", ".txt")):
            _scrub_paths(os.path.join(staging, name))


def _staged(staging: str) -> list[str]:
    """Every file under `staging`, as paths relative to it."""
    return [os.path.relpath(os.path.join(root, n), staging) for root, _, files in os.walk(staging) for n in files]


def _base_model_license(output_dir: str) -> str | None:
    """The base model's license from its Hub card, when it is a Hub model and the Hub tells."""
    base = read_run_info(output_dir).base_model
    if isinstance(base, list):  # a fusion model's encoders: no single license to inherit
        return None
    if os.path.exists(base) or base.count("/") != 1:
        return None
    try:
        card_data = HfApi().model_info(base).card_data
    except Exception:  # offline, gated, or gone: the card simply says nothing
        return None
    return getattr(card_data, "license", None) if card_data else None


def _save_merged(output_dir: str, staging: str) -> None:
    # Here, not at the top: only --merged needs torch, transformers and the models; publishing files does not.
    from .models import load_finetuned

    model = load_finetuned(output_dir)
    model.merge_and_unload().save_pretrained(staging)


def _scrub_paths(path: str) -> None:
    """Replace absolute local paths (e.g. /home/me/data/train) by their last component (train)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def local_name(match: re.Match) -> str:
        found = match.group(0)
        top = "/" + found.split("/")[1]
        return os.path.basename(found.rstrip("/")) or found if os.path.isdir(top) else found

    scrubbed = _ABSOLUTE_PATH.sub(local_name, text)
    if scrubbed != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(scrubbed)


def _refuse_secrets(staging: str, token: str | None) -> None:
    if not token:
        return
    for name in _staged(staging):
        with open(os.path.join(staging, name), "rb") as f:
            if token.encode() in f.read():
                raise PublishError(f"refusing to upload: {name} contains the Hub token")


def _with_retries(call, max_retries: int):
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == max_retries or not _is_transient(error):
                raise
            wait = RETRY_BACKOFF_SECONDS * 2**attempt
            logger.warning("Hub request failed (%s); retrying in %.1f s", _short(error), wait)
            time.sleep(wait)


def _is_transient(error: Exception) -> bool:
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return status in TRANSIENT_STATUS
    # huggingface_hub's HTTP client raises its own transport errors (connection refused, timeouts).
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, (ConnectionError, TimeoutError)) or bool(names & {"TransportError", "TimeoutException"})


def _status(error: Exception) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _short(error: Exception) -> str:
    status = _status(error)
    return f"HTTP {status}" if status else type(error).__name__


def _explain(error: Exception, repo: str, output_dir: str, retry: str) -> str:
    status = _status(error)
    if status == 401:
        why = "the Hub rejected the token (HTTP 401): pass a valid write token with --hub_token or HF_TOKEN, or run `hf auth login`"
    elif status == 403:
        why = f"the token may not write to {repo} (HTTP 403): use a token with write access to that namespace"
    elif status in TRANSIENT_STATUS:
        why = f"the Hub kept failing (HTTP {status}) after retries"
    elif status:
        why = f"the Hub answered HTTP {status}: {error}"
    else:
        why = f"the Hub could not be reached ({type(error).__name__}: {error})"
    return f"Publishing {output_dir} to {repo} failed: {why}.\nThe local folder is complete and unchanged; retry with:\n  {retry}"


def _retry_command(output_dir: str, repo: str, private: bool | None, variant: str | None) -> str:
    parts = ["python", "-m", "mm_hf.publish", output_dir, "--hub_model_id", repo]
    if private:
        parts.append("--private")
    if variant:
        parts.append({"adapter": "--adapter_only", "merged": "--merged"}[variant])
    return " ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mm_hf.publish", description="Publish a recipe output folder to the Hugging Face Hub."
    )
    parser.add_argument("output_dir", help="A recipe's --output_dir.")
    parser.add_argument("--hub_model_id", required=True, help="Target repo: user/name or org/name.")
    parser.add_argument("--private", action="store_true", help="Make the repo private.")
    parser.add_argument("--hub_token", default=None, help="Write token (default: HF_TOKEN or the stored login).")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--adapter_only", action="store_true", help="Publish the LoRA adapter (+ head, processor).")
    variant.add_argument("--merged", action="store_true", help="Publish LoRA merged into the weights.")
    parser.add_argument("--max_retries", type=int, default=4, help="Retries on transient errors (backoff doubles).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    chosen = "adapter" if args.adapter_only else "merged" if args.merged else None
    try:
        url = publish(
            args.output_dir,
            args.hub_model_id,
            private=args.private or None,
            token=args.hub_token,
            variant=chosen,
            max_retries=args.max_retries,
        )
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Published {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
