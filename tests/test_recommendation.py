"""The recommendation application: the log -> (user, item) rows, `--problem_type ranking` in the fusion recipe and in
`python -m mm_hf.evaluate`, and the demo (reduced size) beating its ablations and the popularity baseline."""

import csv
import json
import os

import pytest
from conftest import load_recipe

from mm_hf.apps.recommendation.data import write_ranking_splits, write_synthetic_log
from mm_hf.apps.recommendation.demo import run_demo
from mm_hf.errors import UserError
from mm_hf.evaluate import main as evaluate_main
from mm_hf.models.tiny import build_tiny_encoders

SMALL_LOG = {"num_users": 12, "num_items": 12, "interactions": (6, 7), "seed": 1}
DEMO_EPOCHS = 20


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    write_synthetic_log(str(root), **SMALL_LOG)
    return str(root)


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_each_users_last_interactions_are_held_out_among_unseen_negatives(log_dir, tmp_path):
    files = write_ranking_splits(log_dir, str(tmp_path / "pairs"), test_items=3, validation_items=2,
                                 train_negatives=2, test_negatives=4)  # fmt: skip
    with open(os.path.join(log_dir, "interactions.csv")) as f:
        history = {}
        for row in csv.DictReader(f):
            history.setdefault(row["user_id"], []).append((int(row["timestamp"]), row["item_id"]))
    splits = {name: _rows(path) for name, path in files.items()}
    for user, events in history.items():
        by_time = [item for _, item in sorted(events)]
        positives = {name: [r["item_id"] for r in rows if r["user_id"] == user and r["label"] == 1]
                     for name, rows in splits.items()}  # fmt: skip
        assert positives["test"] == by_time[-3:] and positives["validation"] == by_time[-5:-3]
        assert positives["train"] == by_time[:-5]
        negatives = [r["item_id"] for r in splits["test"] if r["user_id"] == user and r["label"] == 0]
        assert len(negatives) == 4 and not set(negatives) & set(by_time)
        train_negatives = [r for r in splits["train"] if r["user_id"] == user and r["label"] == 0]
        assert len(train_negatives) == 2 * len(positives["train"])
    row = splits["test"][0]
    assert set(row) == {"user_id", "item_id", "image", "title", "region", "age_group", "label"}
    assert os.path.isfile(os.path.join(tmp_path / "pairs", row["image"]))  # relative to the rows' file


def test_ranking_flags_are_refused_when_incomplete_or_misplaced(tmp_path):
    recipe = load_recipe("fusion_imagetext_cls")
    base = ["--output_dir", str(tmp_path), "--label_column", "label", "--text_column", "title"]
    with pytest.raises(UserError, match="needs --group_column"):
        recipe.main([*base, "--problem_type", "ranking"])
    with pytest.raises(UserError, match="only --problem_type ranking"):
        recipe.main([*base, "--problem_type", "binary_classification", "--group_column", "user_id"])


def test_problem_type_ranking_in_the_recipe_and_in_evaluate(log_dir, tmp_path):
    """The fusion recipe with --problem_type ranking reports each user's ranking metrics before/after training and
    per missing modality; `python -m mm_hf.evaluate` on its output reads the run's group column and agrees."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    files = write_ranking_splits(log_dir, str(tmp_path / "pairs"), train_negatives=1, validation_negatives=3,
                                 test_negatives=4)  # fmt: skip
    run = tmp_path / "run"
    results = load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "title", "--categorical_columns", "region", "age_group",
        "--label_column", "label", "--problem_type", "ranking", "--group_column", "user_id", "--ranking_ks", "1", "3",
        "--train_file", files["train"], "--validation_file", files["validation"], "--test_file", files["test"],
        "--output_dir", str(run), "--do_train", "--do_predict", "--use_cpu", "true", "--max_steps", "2",
        "--finetune_strategy", "linear_probe", "--per_device_train_batch_size", "16", "--hidden_size", "16",
        "--max_seq_length", "8", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ])  # fmt: skip
    users = len({row["user_id"] for row in _rows(files["test"])})
    assert results["test_num_groups"] == users and results["test_mean_candidates"] == 3 + 4
    for prefix in ("zeroshot_test", "test", "test_without_image", "test_without_text", "test_without_tabular"):
        assert 0 < results[f"{prefix}_ndcg@3"] <= 1 and 0 < results[f"{prefix}_mrr"] <= 1, prefix
        assert f"{prefix}_roc_auc" in results and f"{prefix}_recall@1" in results
    assert "| ndcg@3 " in (run / "before_after.md").read_text()

    result = evaluate_main(["--model", f"rec={run}", "--test_file", files["test"], "--output_dir",
                            str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--disable_tqdm"])  # fmt: skip
    entry = result["models"]["rec"]["sets"]["test"]
    assert result["problem_type"] == "ranking" and result["ranking_ks"] == [1, 3]
    for key in ("ndcg@3", "recall@3", "hit_rate@1", "mrr", "roc_auc", "log_loss"):
        assert entry["metrics"][key] == pytest.approx(results[f"test_{key}"], abs=1e-6), key
        assert entry["missing_modality"]["text"][key] == pytest.approx(results[f"test_without_text_{key}"], abs=1e-6)
    assert "ndcg@3 without image" in (tmp_path / "eval" / "evaluation.md").read_text()


@pytest.mark.slow
def test_demo_beats_its_ablations_and_the_popularity_baseline(tmp_path):
    """The demo with tiny random encoders (its data at full size: 120 users): the fused model ranks held-out items clearly better than the
    popularity baseline, than itself untrained, and than models trained without the image, the title or the user
    features."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    overrides = {"vision_model_name_or_path": encoders["vision"], "text_model_name_or_path": encoders["text"],
                 "num_train_epochs": DEMO_EPOCHS, "hidden_size": 32, "use_cpu": True, "save_strategy": "no",
                 "eval_strategy": "no", "do_eval": False}  # fmt: skip
    rows = run_demo(str(tmp_path), overrides=overrides)
    fused = rows["fine-tuned: image + title + user"]["ndcg@10"]
    others = {name: metrics["ndcg@10"] for name, metrics in rows.items() if not name.startswith("fine-tuned")}
    assert set(others) == {"popularity (train relevance rate)", "untrained heads (image + title + user)",
                           "trained on title + user (no image)", "trained on image + user (no title)",
                           "trained on image + title (no user)"}  # fmt: skip
    for name, ndcg in others.items():
        assert fused > ndcg + 0.05, (name, rows)
    assert "| popularity (train relevance rate) |" in (tmp_path / "recommendation" / "results.md").read_text()
