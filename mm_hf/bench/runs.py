"""Running the recipes for the benchmark: the dual encoder they fine-tune, their `main(argv)` in-process with
default flags plus data/model/output/epoch flags, one row per strategy."""

import importlib.util
import os
import shutil
import time
import traceback

from . import data
from .report import REPO, row


def load_recipe(name: str):
    """A recipe module from recipes/ (scripts, not a package), to call its `main(argv)` in-process."""
    path = REPO / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_dual_encoder(realmodels: str, output_dir: str, image_size: int = 112, seed: int = 0) -> str:
    """VisionTextDualEncoder = DINOv2-small image tower + MiniLM text tower + new projections (seeded), with a
    processor that resizes and crops to `image_size` px (DINOv2 interpolates its position embeddings)."""
    import torch
    from transformers import (
        AutoModel,
        AutoTokenizer,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderProcessor,
    )

    if os.path.isfile(os.path.join(output_dir, "config.json")):
        return output_dir
    vision_dir, text_dir = (os.path.join(realmodels, n) for n in ("dinov2-small", "all-minilm-l6-v2"))
    torch.manual_seed(seed)
    vision, text = AutoModel.from_pretrained(vision_dir), AutoModel.from_pretrained(text_dir)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision.config, text.config)
    model = VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)
    image_processor = bench_image_processor(vision_dir, image_size)
    model.save_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def bench_image_processor(vision_dir: str, image_size: int):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(
        vision_dir, size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def run_recipe(recipe: str, argv: list[str]) -> tuple[dict, dict, float]:
    """(results, resolved args, wall seconds) of `recipes/<recipe>.py main(argv)`; checkpoints are removed after."""
    import yaml

    module = load_recipe(recipe)
    start = time.perf_counter()
    results = module.main(argv)
    wall = time.perf_counter() - start
    out = argv[argv.index("--output_dir") + 1]
    with open(os.path.join(out, "run_config.yaml")) as f:
        resolved = yaml.safe_load(f) or {}
    for entry in os.listdir(out):  # weights and checkpoints: GBs over a whole bench, the metrics stay
        path = os.path.join(out, entry)
        if entry.startswith("checkpoint-"):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.endswith((".safetensors", ".bin")):
            os.remove(path)
    return results, resolved, wall


def recipe_argv(model: str, data_dir: str, output_dir: str, strategy: str, epochs: float | None) -> list[str]:
    argv = ["--model_name_or_path", model]
    for split in data.SPLITS:
        argv += [f"--{split}_dir", os.path.join(data_dir, split)]
    argv += ["--output_dir", output_dir, "--overwrite_output_dir", "true", "--do_train", "--do_eval", "--do_predict"]
    argv += ["--finetune_strategy", strategy, "--disable_tqdm", "true"]
    if epochs is not None:
        argv += ["--num_train_epochs", str(epochs)]
    return argv


def recipe_rows(recipe, model, ds, data_dir, workdir, strategies, epochs, before_name) -> tuple[list[dict], dict]:
    """One row per strategy plus the before-training row (taken from the first run); returns rows and the
    resolved arguments of each strategy's run."""
    rows, resolved = [], {}
    for strategy in strategies:
        argv = recipe_argv(model, data_dir, os.path.join(workdir, "runs", ds.name, strategy), strategy, epochs)
        try:
            results, resolved[strategy], wall = run_recipe(recipe, argv)
        except Exception as error:  # noqa: BLE001 - a failed row is reported in the table, the bench goes on
            traceback.print_exc()
            rows.append(row(recipe, strategy, ds.name, None, argv=argv, notes=f"error: {error!r}"[:300]))
            continue
        if not any(r["strategy"] == before_name for r in rows):
            before = results.get("zeroshot_test_accuracy")
            rows.insert(0, row(recipe, before_name, ds.name, before, notes=f"before training, from the {strategy} run"))
        rows.append(row(recipe, strategy, ds.name, results.get("test_accuracy"), wall, argv))
    return rows, resolved
