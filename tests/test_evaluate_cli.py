"""python -m mm_hf.evaluate on tiny models: a recipe's LoRA run, a plain ViT classifier and a zero-shot dual encoder."""

import csv
import json
import os
import shutil

import pytest
import torch
from conftest import load_recipe
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from mm_hf.demo import write_tones_audiofolder
from mm_hf.errors import DataError, UserError
from mm_hf.evaluate import main
from mm_hf.models import MultimodalFusionConfig

CLASSES = ["one", "three", "two", "zero"]  # the digits fixture's class folders, sorted


def save_vit(path, labels=CLASSES, seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return str(path)


def evaluate(out, models, test_dir, *extra):
    argv = ["--output_dir", str(out), "--test_dir", str(test_dir), "--dataloader_num_workers", "0"]
    argv += ["--disable_tqdm", "--num_resamples", "200", "--latency_runs", "2", "--per_device_eval_batch_size", "16"]
    for name, path in models.items():
        argv += ["--model", f"{name}={path}"]
    return main(argv + list(extra))


def run_recipe(tiny_vtde, digits_dir, out, *strategy):
    recipe = load_recipe("clip_imagecls")
    return recipe.main([
        "--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--train_dir", str(digits_dir / "train"),
        "--validation_dir", str(digits_dir / "validation"), "--test_dir", str(digits_dir / "test"),
        "--do_train", "--do_eval", "--do_predict", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--save_strategy", "no", "--prompt_templates", "a photo of the digit {}.", *strategy,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def recipe_runs(tiny_vtde, digits_dir, tmp_path_factory):
    """Two recipes/clip_imagecls.py runs and their all_results.json: a linear probe (a full checkpoint, test accuracy
    0.70 on the digits) and 2 steps of LoRA (an adapter)."""
    probe, lora = tmp_path_factory.mktemp("probe"), tmp_path_factory.mktemp("lora")
    probe_results = run_recipe(tiny_vtde, digits_dir, probe, "--finetune_strategy", "linear_probe", "--head_init",
                               "random")  # fmt: skip
    lora_results = run_recipe(tiny_vtde, digits_dir, lora, "--finetune_strategy", "lora", "--max_steps", "2",
                              "--head_init", "zeroshot")  # fmt: skip
    assert os.path.exists(lora / "adapter_config.json") and not os.path.exists(probe / "adapter_config.json")
    return {"probe": (probe, probe_results), "lora": (lora, lora_results)}


def test_evaluate_models_side_by_side(recipe_runs, tiny_vtde, digits_dir, tmp_path):
    vit = save_vit(tmp_path / "vit")
    out = tmp_path / "eval"
    probe = recipe_runs["probe"][0]
    models = {"probe": probe, "probe_copy": probe, "lora": recipe_runs["lora"][0], "vit": vit, "zeroshot": tiny_vtde}
    result = evaluate(
        out, models, digits_dir / "test",
        "--ood", f"shifted={digits_dir / 'validation'}", "--calibration_data", str(digits_dir / "validation"),
        "--corruptions", "gaussian_noise", "--severities", "1,3", "--prompt_templates", "a photo of the digit {}.",
    )  # fmt: skip
    on_disk = json.loads((out / "evaluation.json").read_text())
    assert on_disk["models"].keys() == models.keys() and on_disk["failed"] == {}
    assert on_disk["label_names"] == CLASSES and on_disk["sets"]["test"]["samples"] == 20
    assert on_disk["sets"]["shifted"]["samples"] == 16

    # The clean test numbers are each recipe's own test_* numbers for its checkpoint.
    for name, saved_as in (("probe", "full"), ("lora", "adapter")):
        entry, recipe_results = on_disk["models"][name], recipe_runs[name][1]
        assert entry["kind"] == "mm-hf" and entry["saved_as"] == saved_as
        for metric in ("accuracy", "macro_f1", "weighted_f1"):
            assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(
                recipe_results[f"test_{metric}"], abs=1e-12
            )
    assert on_disk["models"]["probe"]["sets"]["test"]["metrics"]["accuracy"] == pytest.approx(0.7)

    # Accuracy / F1 match scikit-learn on the saved predictions; every CI holds its estimate.
    with open(out / "predictions" / "test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20
    truth = [row["label"] for row in rows]
    for name, entry in on_disk["models"].items():
        predicted = [row[name] for row in rows]
        metrics = entry["sets"]["test"]["metrics"]
        assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=CLASSES))
        for ci in entry["sets"]["test"]["confidence_intervals"].values():
            assert ci["low"] <= ci["estimate"] <= ci["high"]
        calibration = entry["sets"]["test"]["calibration"]
        assert 0 <= calibration["ece"] <= 1 and calibration["nll"] > 0 and 0 <= calibration["brier"] <= 2
        assert entry["temperature_scaling"]["temperature"] > 0
        assert entry["temperature_scaling"]["after"]["nll"] <= entry["temperature_scaling"]["before"]["nll"] + 1e-9
        gap = entry["sets"]["shifted"]["gap"]["accuracy_minus_test"]
        assert gap == pytest.approx(entry["sets"]["shifted"]["metrics"]["accuracy"] - metrics["accuracy"])
        assert set(entry["corruptions"]["gaussian_noise"]) == {"1", "3"}
        assert entry["robustness"]["mean_corruption_accuracy"] == pytest.approx(
            sum(entry["corruptions"]["gaussian_noise"].values()) / 2
        )
        cost = entry["cost"]
        assert cost["total_params"] > 0 and cost["peak_rss_bytes"] > 0
        assert cost["latency"]["batch_32"]["p95_s"] >= cost["latency"]["batch_32"]["p50_s"] > 0
    interval = on_disk["models"]["probe"]["sets"]["test"]["confidence_intervals"]["accuracy"]
    assert interval["low"] < 0.7 < interval["high"]  # 20 samples: a wide interval, not a point
    assert on_disk["models"]["zeroshot"]["cost"]["trainable_params"] == 0
    assert on_disk["models"]["probe"]["cost"]["trainable_params"] < on_disk["models"]["probe"]["cost"]["total_params"]
    assert on_disk["models"]["vit"]["cost"]["disk_bytes"] > 0
    # The zero-shot model is the baseline of effective robustness for the others.
    assert on_disk["models"]["lora"]["robustness"]["effective_robustness_baseline"] == "zeroshot"

    # Paired tests: McNemar's counts and p-value from the saved predictions; a model against itself gives p = 1.
    for set_name in ("test", "shifted"):
        pairs = on_disk["paired_tests"][set_name]
        assert len(pairs) == 10
        for tests in pairs.values():
            assert 0 <= tests["mcnemar"]["p_value"] <= 1
            assert 0 <= tests["paired_bootstrap_accuracy"]["p_value"] <= 1
        same = pairs["probe vs probe_copy"]
        assert same["mcnemar"]["p_value"] == 1.0 and same["mcnemar"]["a_only"] == same["mcnemar"]["b_only"] == 0
        assert same["paired_bootstrap_accuracy"]["difference"]["estimate"] == 0
    probe_right = [row["probe"] == row["label"] for row in rows]
    vit_right = [row["vit"] == row["label"] for row in rows]
    a_only = sum(p and not v for p, v in zip(probe_right, vit_right, strict=True))
    b_only = sum(v and not p for p, v in zip(probe_right, vit_right, strict=True))
    mcnemar = on_disk["paired_tests"]["test"]["probe vs vit"]["mcnemar"]
    assert (mcnemar["a_only"], mcnemar["b_only"]) == (a_only, b_only) and a_only + b_only > 0
    assert mcnemar["p_value"] == pytest.approx(binomtest(b_only, a_only + b_only, 0.5).pvalue)

    markdown = (out / "evaluation.md").read_text()
    assert "probe vs probe_copy" in markdown and "gaussian_noise@3" in markdown and "Temperature scaling" in markdown
    for plot in ("reliability_lora.png", "corruption_gaussian_noise.png", "per_class_f1.png", "id_vs_ood.png"):
        assert (out / "plots" / plot).stat().st_size > 0
    assert result["models"]["vit"]["sets"]["test"]["metrics"] == on_disk["models"]["vit"]["sets"]["test"]["metrics"]


def test_model_with_other_labels_is_refused_with_both_lists(digits_dir, tmp_path):
    vit = save_vit(tmp_path / "vit")
    other = save_vit(tmp_path / "other", labels=["cat", "dog", "two", "zero"])
    with pytest.raises(DataError) as error:
        evaluate(tmp_path / "eval", {"vit": vit, "other": other}, digits_dir / "test")
    message = str(error.value)
    assert "other=" in message and "['cat', 'dog', 'two', 'zero']" in message and str(CLASSES) in message
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_ood_set_with_unseen_labels_is_refused_naming_them(digits_dir, tmp_path):
    ood = tmp_path / "ood"
    shutil.copytree(digits_dir / "test", ood)
    shutil.copytree(digits_dir / "test" / "one", ood / "five")
    with pytest.raises(DataError, match=r"\['five'\]"):
        evaluate(tmp_path / "eval", {"vit": save_vit(tmp_path / "vit")}, digits_dir / "test", "--ood", f"odd={ood}")


def test_unloadable_checkpoint_is_reported_and_the_others_evaluated(digits_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    result = evaluate(
        tmp_path / "eval", {"broken": broken, "vit": save_vit(tmp_path / "vit")}, digits_dir / "test",
        "--latency_runs", "0",
    )  # fmt: skip
    assert list(result["models"]) == ["vit"] and "broken" in result["failed"]
    assert "broken" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert "latency" not in result["models"]["vit"]["cost"]


def test_audio_recipe_run_equals_its_own_test_numbers(tiny_wav2vec2, tmp_path):
    """An audio_cls run (linear probe): the clip length comes from its run_config.yaml, corruptions run on clips."""
    tones = tmp_path / "tones"
    write_tones_audiofolder(str(tones), per_class=(6, 2, 4), seed=0)
    run = tmp_path / "run"
    results = load_recipe("audio_cls").main([
        "--model_name_or_path", tiny_wav2vec2, "--output_dir", str(run), "--train_dir", str(tones / "train"),
        "--validation_dir", str(tones / "validation"), "--test_dir", str(tones / "test"), "--do_train", "--do_eval",
        "--do_predict", "--finetune_strategy", "linear_probe", "--per_device_eval_batch_size", "16",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        "--max_length_seconds", "0.5",
    ])  # fmt: skip
    result = evaluate(tmp_path / "eval", {"probe": run}, tones / "test", "--corruptions", "gain,noise",
                      "--severities", "5", "--latency_runs", "0")  # fmt: skip
    entry = result["models"]["probe"]
    assert result["modality"] == "audio" and entry["sets"]["test"]["samples"] == 16
    for metric in ("accuracy", "macro_f1"):
        assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"], abs=1e-12)
    assert set(entry["corruptions"]) == {"gain", "noise"} and 0 <= entry["corruptions"]["noise"]["5"] <= 1
    assert result["paired_tests"]["test"] == {}  # one model: nothing to pair


def test_fusion_checkpoint_is_refused_as_not_supported_yet(digits_dir, tmp_path):
    MultimodalFusionConfig().save_pretrained(tmp_path / "fusion")
    with pytest.raises(UserError, match="fusion/video checkpoint.*not supported|only for now"):
        evaluate(tmp_path / "eval", {"fusion": tmp_path / "fusion"}, digits_dir / "test")


@pytest.mark.parametrize(
    ("values", "message"),
    [(["a=x", "b"], "'b': expected NAME=PATH"), (["a=x", "a=y"], "'a' is given twice"), (["=x"], "expected NAME=PATH")],
)
def test_model_flag_needs_distinct_names(digits_dir, tmp_path, values, message):
    argv = ["--test_dir", str(digits_dir / "test"), "--output_dir", str(tmp_path)]
    with pytest.raises(UserError, match=message):
        main(argv + [token for value in values for token in ("--model", value)])


def test_several_processes_are_refused_until_sharding_exists(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="sharded evaluation"):
        main(["--model", "a=x", "--test_dir", str(tmp_path), "--output_dir", str(tmp_path / "eval")])
