"""python -m mm_hf.evaluate on tiny models: a recipe's LoRA run, a plain ViT classifier and a zero-shot dual encoder."""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_recipe
from huggingface_hub import ModelCard, metadata_load
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoProcessor, ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

from mm_hf.data.synthetic import write_imagetext_xor
from mm_hf.data.transforms import build_image_transform
from mm_hf.demo import write_tones_audiofolder
from mm_hf.errors import DataError, UserError
from mm_hf.evaluate import main
from mm_hf.models import MultimodalFusionConfig, build_audio_classifier, build_dual_encoder_classifier, load_finetuned
from mm_hf.models.tiny import build_tiny_encoders

CLASSES = ["one", "three", "two", "zero"]  # the digits fixture's class folders, sorted
ACCELERATE_CONFIG = os.path.join(REPO, "recipes", "accelerate", "cpu_2proc.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    0.70 on the digits) and 2 steps of LoRA (an adapter, with --ood_dir and --robustness)."""
    probe, lora = tmp_path_factory.mktemp("probe"), tmp_path_factory.mktemp("lora")
    probe_results = run_recipe(tiny_vtde, digits_dir, probe, "--finetune_strategy", "linear_probe", "--head_init",
                               "random")  # fmt: skip
    # The LoRA run also measures a shifted set and a corruption sweep (mm_hf.evaluate.shifts), before and after.
    lora_results = run_recipe(tiny_vtde, digits_dir, lora, "--finetune_strategy", "lora", "--max_steps", "2",
                              "--head_init", "zeroshot", "--ood_dir", f"shifted={digits_dir / 'validation'}",
                              "--robustness", "gaussian_noise", "--robustness_severities", "1,3", "--seed", "0")  # fmt: skip
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

    # The LoRA run's own --ood_dir / --robustness numbers are this command's: after fine-tuning for its checkpoint,
    # before for the zero-shot model it started from (same prompt, same corruption seed).
    lora_results = recipe_runs["lora"][1]
    for name, before in (("lora", ""), ("zeroshot", "zeroshot_")):
        entry = on_disk["models"][name]
        for metric in ("accuracy", "macro_f1", "weighted_f1"):
            assert lora_results[f"{before}ood_shifted_{metric}"] == pytest.approx(
                entry["sets"]["shifted"]["metrics"][metric], abs=1e-12
            )
        for severity in ("1", "3"):
            assert lora_results[f"{before}corruption_gaussian_noise_s{severity}_accuracy"] == pytest.approx(
                entry["corruptions"]["gaussian_noise"][severity]
            )
        for key, summary in (("mean", "mean_corruption_accuracy"), ("relative", "relative_accuracy")):
            assert lora_results[f"{before}corruption_{key}_accuracy"] == pytest.approx(entry["robustness"][summary])
    table = (recipe_runs["lora"][0] / "before_after.md").read_text()
    for row in ("ood_shifted_accuracy", "ood_shifted_macro_f1", "corruption_mean_accuracy", "corruption_relative"):
        assert row in table and row in (recipe_runs["lora"][0] / "README.md").read_text()

    # Effective robustness on "shifted" against the zero-shot model's line (one baseline: slope 1 in logit space,
    # so the line keeps the zero-shot model's OOD/test odds ratio).
    line = on_disk["effective_robustness_lines"]["shifted"]
    assert (line["models"], line["fit"]) == (["zeroshot"], "slope_1_through_point")
    zeroshot = on_disk["models"]["zeroshot"]["sets"]
    ratio = odds(zeroshot["shifted"]["metrics"]["accuracy"]) / odds(zeroshot["test"]["metrics"]["accuracy"])
    for entry in on_disk["models"].values():
        test_accuracy, ood_accuracy = (entry["sets"][s]["metrics"]["accuracy"] for s in ("test", "shifted"))
        expected = ratio * odds(test_accuracy) / (1 + ratio * odds(test_accuracy))
        assert entry["sets"]["shifted"]["effective_robustness"]["value"] == pytest.approx(ood_accuracy - expected)
    assert zeroshot["shifted"]["effective_robustness"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert "effective robustness" in (out / "evaluation.md").read_text()

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


def odds(p):
    return p / (1 - p)


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
    """An audio_cls run (linear probe): the clip length comes from its run_config.yaml, corruptions run on clips, and
    the run's own --ood_dir / --robustness numbers equal this command's."""
    tones = tmp_path / "tones"
    write_tones_audiofolder(str(tones), per_class=(6, 2, 4), seed=0)
    run = tmp_path / "run"
    results = load_recipe("audio_cls").main([
        "--model_name_or_path", tiny_wav2vec2, "--output_dir", str(run), "--train_dir", str(tones / "train"),
        "--validation_dir", str(tones / "validation"), "--test_dir", str(tones / "test"), "--do_train", "--do_eval",
        "--do_predict", "--finetune_strategy", "linear_probe", "--per_device_eval_batch_size", "16",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        "--max_length_seconds", "0.5", "--seed", "0", "--ood_dir", f"val={tones / 'validation'}",
        "--robustness", "gain,noise", "--robustness_severities", "5",
    ])  # fmt: skip
    result = evaluate(tmp_path / "eval", {"probe": run}, tones / "test", "--corruptions", "gain,noise",
                      "--severities", "5", "--latency_runs", "0", "--ood", f"val={tones / 'validation'}")  # fmt: skip
    entry = result["models"]["probe"]
    assert result["modality"] == "audio" and entry["sets"]["test"]["samples"] == 16
    for metric in ("accuracy", "macro_f1"):
        assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"], abs=1e-12)
        # The run's own --ood_dir / --robustness numbers (after fine-tuning) are this command's.
        assert entry["sets"]["val"]["metrics"][metric] == pytest.approx(results[f"ood_val_{metric}"], abs=1e-12)
    assert set(entry["corruptions"]) == {"gain", "noise"} and 0 <= entry["corruptions"]["noise"]["5"] <= 1
    for corruption in ("gain", "noise"):
        assert entry["corruptions"][corruption]["5"] == pytest.approx(results[f"corruption_{corruption}_s5_accuracy"])
    assert entry["robustness"]["relative_accuracy"] == pytest.approx(results["corruption_relative_accuracy"])
    assert result["paired_tests"]["test"] == {}  # one model: nothing to pair


def test_fusion_run_equals_its_own_test_numbers_with_each_modality_missing(tmp_path):
    """A recipes/fusion_imagetext_cls.py run (image + text, some rows missing a modality): evaluate reads the run's
    columns from run_config.yaml and gives the recipe's test_* numbers, also with each modality missing."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    data = write_imagetext_xor(str(tmp_path / "data"), sizes=(24, 8, 14), seed=0, missing_rate=0.2)
    run = tmp_path / "run"
    results = load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--label_column", "label",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(run), "--do_train", "--do_predict", "--use_cpu", "true", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--fusion", "concat",
        "--hidden_size", "32", "--max_seq_length", "12", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--ood_file", f"val={data['validation']}", "--robustness", "typos,gaussian_noise",
        "--robustness_severities", "5", "--seed", "3",
    ])  # fmt: skip
    argv = ["--model", f"fusion={run}", "--test_file", data["test"], "--ood", f"val={data['validation']}",
            "--output_dir", str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--disable_tqdm",
            "--per_device_eval_batch_size", "5", "--latency_runs", "0"]  # fmt: skip
    result = main([*argv, "--corruptions", "typos,gaussian_noise", "--severities", "5", "--seed", "3"])
    entry = result["models"]["fusion"]
    assert result["modality"] == "fusion" and result["modalities"] == ["image", "text"]
    assert entry["sets"]["test"]["samples"] == results["test_samples"] == 14
    for metric in ("accuracy", "macro_f1", "roc_auc"):
        assert entry["sets"]["test"]["metrics"][metric] == pytest.approx(results[f"test_{metric}"], abs=1e-9)
        for modality in ("image", "text"):
            assert entry["sets"]["test"]["missing_modality"][modality][metric] == pytest.approx(
                results[f"test_without_{modality}_{metric}"], abs=1e-9
            )
    relative = entry["sets"]["test"]["missing_modality_relative"]["text"]
    assert relative == pytest.approx(
        results["test_without_text_accuracy"] / results["test_accuracy"]
    )  # fmt: skip
    assert entry["sets"]["val"]["samples"] == 8
    # Text and image corruptions of the fusion columns, and the run's own --ood_file / --robustness numbers (after
    # training) equal this command's on its checkpoint.
    for metric in ("accuracy", "macro_f1"):
        assert results[f"ood_val_{metric}"] == pytest.approx(entry["sets"]["val"]["metrics"][metric], abs=1e-9)
    for corruption in ("typos", "gaussian_noise"):
        assert 0 <= entry["corruptions"][corruption]["5"] <= 1
        assert results[f"corruption_{corruption}_s5_accuracy"] == pytest.approx(entry["corruptions"][corruption]["5"])
    assert results["corruption_relative_accuracy"] == pytest.approx(entry["robustness"]["relative_accuracy"])
    assert (
        "zeroshot_corruption_mean_accuracy" in results and "ood_val_accuracy" in (run / "before_after.md").read_text()
    )
    assert "typos@5" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["models"]["fusion"] == entry
    assert "accuracy without text" in (tmp_path / "eval" / "evaluation.md").read_text()

    # The run's card lists its --ood_file set and its sweep; --update_card replaces them with this command's numbers.
    recipe_index = metadata_load(run / "README.md")["model-index"][0]["results"]
    assert {e["dataset"].get("config") for e in recipe_index} == {None, "val", "corruptions"}
    main([*argv, "--corruptions", "typos,gaussian_noise", "--severities", "5", "--seed", "3", "--update_card"])
    card = ModelCard.load(run / "README.md").data.eval_results
    found = {(r.dataset_config, r.metric_type): r.metric_value for r in card}
    assert len(found) == len(card)  # nothing listed twice
    headline = result["headline"]
    assert found[("val", headline)] == pytest.approx(entry["sets"]["val"]["metrics"][headline])
    assert found[(None, "accuracy")] == pytest.approx(results["test_accuracy"])
    assert {m for c, m in found if c == "corruptions"} == {f"mean_corruption_{headline}", f"relative_{headline}"}
    assert found[("corruptions", f"relative_{headline}")] == pytest.approx(entry["robustness"]["relative_accuracy"])
    assert len(metadata_load(run / "README.md")["model-index"][0]["results"]) == 3

    # Flags of the image/audio flow are refused for fusion, never ignored; so is mixing with image models.
    with pytest.raises(UserError, match="--prompt_templates: not available for fusion"):
        main([*argv, "--prompt_templates", "a {}"])
    with pytest.raises(UserError, match="not fusion checkpoints"):
        main([*argv, "--model", f"vit={save_vit(tmp_path / 'vit')}"])


def test_fusion_checkpoint_without_its_run_config_is_refused(tmp_path):
    MultimodalFusionConfig().save_pretrained(tmp_path / "fusion")
    (tmp_path / "test.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="run_config.yaml"):
        main(["--model", f"fusion={tmp_path / 'fusion'}", "--test_file", str(tmp_path / "test.jsonl"),
              "--output_dir", str(tmp_path / "eval")])  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [(["a=x", "b"], "'b': expected NAME=PATH"), (["a=x", "a=y"], "'a' is given twice"), (["=x"], "expected NAME=PATH")],
)
def test_model_flag_needs_distinct_names(digits_dir, tmp_path, values, message):
    argv = ["--test_dir", str(digits_dir / "test"), "--output_dir", str(tmp_path)]
    with pytest.raises(UserError, match=message):
        main(argv + [token for value in values for token in ("--model", value)])


def test_two_process_sharded_evaluation_equals_one_process(digits_dir, tmp_path):
    """accelerate launch -m mm_hf.evaluate on 2 gloo processes: each scores a shard, the gathered numbers and the
    per-sample predictions equal one process's. 19 test images in batches of 3 pad rank 1's shard with a duplicate,
    the corruption sweep and the calibration fit run sharded too."""
    models = {"vit": save_vit(tmp_path / "vit"), "vit2": save_vit(tmp_path / "vit2", seed=1)}
    flags = ["--max_predict_samples", "19", "--per_device_eval_batch_size", "3", "--ood",
             f"shifted={digits_dir / 'validation'}", "--calibration_data", str(digits_dir / "validation"),
             "--corruptions", "gaussian_noise", "--severities", "2", "--latency_runs", "0", "--device", "cpu"]  # fmt: skip
    single = evaluate(tmp_path / "single", models, digits_dir / "test", *flags)
    out = tmp_path / "sharded"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG, "--multi_gpu",
        "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "mm_hf.evaluate",
        "--output_dir", str(out), "--test_dir", str(digits_dir / "test"), "--dataloader_num_workers", "0",
        "--disable_tqdm", "--num_resamples", "200", *flags,
    ] + [token for name, path in models.items() for token in ("--model", f"{name}={path}")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("Evaluated vit, vit2") == 1  # the main process alone reports and writes

    sharded = json.loads((out / "evaluation.json").read_text())
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert sharded["sets"]["test"]["samples"] == 19
    for name in models:
        one, two = single["models"][name], sharded["models"][name]
        for set_name in ("test", "shifted"):
            assert two["sets"][set_name]["samples"] == one["sets"][set_name]["samples"]
            assert two["sets"][set_name]["metrics"] == pytest.approx(one["sets"][set_name]["metrics"], abs=1e-12)
            assert two["sets"][set_name]["confusion_matrix"] == one["sets"][set_name]["confusion_matrix"]
            for key in ("ece", "nll", "brier"):
                assert two["sets"][set_name]["calibration"][key] == pytest.approx(
                    one["sets"][set_name]["calibration"][key], rel=1e-5
                )
        assert two["temperature_scaling"]["temperature"] == pytest.approx(
            one["temperature_scaling"]["temperature"], rel=1e-4
        )
        assert two["corruptions"] == one["corruptions"]
    assert sharded["paired_tests"]["test"]["vit vs vit2"]["mcnemar"] == pytest.approx(
        single["paired_tests"]["test"]["vit vs vit2"]["mcnemar"]
    )
    for set_name in ("test", "shifted"):  # the same predictions, in the original sample order
        assert (out / "predictions" / f"{set_name}.csv").read_text() == (
            tmp_path / "single" / "predictions" / f"{set_name}.csv"
        ).read_text()


def test_save_temperature_makes_reloaded_probabilities_calibrated(recipe_runs, digits_dir, tmp_path):
    """The temperature fitted on --calibration_data goes into each mm-hf config; after reload (full checkpoint
    through pipeline(), adapter through load_finetuned) the softmax equals softmax(logits / T) of the model before.
    A plain transformers checkpoint has no such field: its config stays byte for byte."""
    probe, lora = tmp_path / "probe", tmp_path / "lora"
    shutil.copytree(recipe_runs["probe"][0], probe)  # the module's runs stay untouched for the other tests
    shutil.copytree(recipe_runs["lora"][0], lora)
    vit = save_vit(tmp_path / "vit")
    vit_config = (tmp_path / "vit" / "config.json").read_bytes()
    images = sorted(str(p) for p in (digits_dir / "test").glob("*/*.png"))[:6]
    before = {name: _probabilities(path, images) for name, path in (("probe", probe), ("lora", lora))}

    result = evaluate(tmp_path / "eval", {"probe": probe, "lora": lora, "vit": vit}, digits_dir / "test",
                      "--calibration_data", str(digits_dir / "validation"), "--save_temperature", "--latency_runs", "0")  # fmt: skip
    assert (tmp_path / "vit" / "config.json").read_bytes() == vit_config
    assert result["models"]["vit"]["temperature_scaling"]["saved_to"] is None
    for name, path in (("probe", probe), ("lora", lora)):
        scaling = result["models"][name]["temperature_scaling"]
        temperature = scaling["temperature"]
        assert scaling["saved_to"] == str(path / "config.json") and abs(temperature - 1.0) > 0.05
        assert json.loads((path / "config.json").read_text())["calibration_temperature"] == temperature
        logits = before[name][1]
        expected = torch.softmax(logits / temperature, dim=-1)
        assert torch.allclose(_probabilities(path, images)[0], expected, atol=1e-5)
        assert not torch.allclose(torch.softmax(logits, dim=-1), expected, atol=1e-3)  # the change is visible
    # pipeline() on the reloaded full checkpoint: its scores are the calibrated probabilities.
    classify = pipeline("image-classification", model=str(probe), top_k=None)
    calibrated = torch.softmax(before["probe"][1] / result["models"]["probe"]["temperature_scaling"]["temperature"], -1)
    for image, row, scores in zip(images, calibrated, classify(images), strict=True):
        by_label = {score["label"]: score["score"] for score in scores}
        # abs 1e-4: pipeline() decodes and resizes the PNG itself (1e-5 apart); T = 1.9 moves them by > 1e-2
        assert [by_label[label] for label in CLASSES] == pytest.approx(row.tolist(), abs=1e-4), image

    # A second fit composes with the saved temperature (the scored logits are already divided by it).
    again = evaluate(tmp_path / "eval2", {"probe": probe}, digits_dir / "test", "--calibration_data",
                     str(digits_dir / "validation"), "--save_temperature", "--latency_runs", "0")  # fmt: skip
    refit = again["models"]["probe"]["temperature_scaling"]["temperature"]
    assert refit == pytest.approx(1.0, abs=0.02)
    assert json.loads((probe / "config.json").read_text())["calibration_temperature"] == pytest.approx(
        result["models"]["probe"]["temperature_scaling"]["temperature"] * refit
    )


def test_save_temperature_needs_calibration_data(digits_dir, tmp_path):
    with pytest.raises(UserError, match="--save_temperature.*--calibration_data"):
        evaluate(tmp_path / "eval", {"vit": save_vit(tmp_path / "vit")}, digits_dir / "test", "--save_temperature")


@torch.no_grad()
def _probabilities(path, images):
    """(softmax, logits) of the mm-hf checkpoint at `path` (eval mode, as inference runs) on `images`."""
    model = load_finetuned(str(path)).eval()
    transform = build_image_transform(AutoProcessor.from_pretrained(path).image_processor, train=False)
    pixel_values = torch.stack(transform({"image": images})["pixel_values"])
    logits = model(pixel_values=pixel_values).logits
    return torch.softmax(logits, dim=-1), logits


@pytest.mark.parametrize("family", ["clip", "audio"])
def test_calibration_temperature_divides_logits_in_eval_mode_only(family, tiny_vtde, tiny_wav2vec2):
    labels = dict(enumerate(CLASSES))
    if family == "clip":
        model = build_dual_encoder_classifier(tiny_vtde, labels, head_init="random")
        inputs = {"pixel_values": torch.randn(3, 3, 32, 32)}
        head_inputs = {"image_embeds": torch.randn(3, model.config.embed_dim)}
    else:
        model = build_audio_classifier(tiny_wav2vec2, labels, head_dropout=0.0)
        inputs = {"input_values": torch.randn(3, 1600)}
        head_inputs = {"pooled_embeds": torch.randn(3, 32)}  # the backbone's SpecAugment draws from numpy
    with torch.no_grad():
        raw = model.eval()(**inputs).logits
        model.config.calibration_temperature = 2.5
        assert torch.allclose(model(**inputs).logits, raw / 2.5)
        trained = []
        for temperature in (2.5, 1.0):  # training never sees it (same seed: the same dropout masks)
            model.config.calibration_temperature = temperature
            torch.manual_seed(0)
            trained.append(model.train()(**head_inputs).logits)
        assert torch.equal(trained[0], trained[1])
    with pytest.raises(ValueError, match="calibration_temperature must be > 0"):
        type(model.config)(calibration_temperature=0.0)


def test_update_card_adds_model_index_entries_huggingface_hub_parses(recipe_runs, digits_dir, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(recipe_runs["probe"][0], probe)
    card_before = ModelCard.load(probe / "README.md")
    vit = save_vit(tmp_path / "vit")
    flags = ("--ood", f"shifted={digits_dir / 'validation'}", "--corruptions", "gaussian_noise", "--severities", "1,3",
             "--update_card", "--latency_runs", "0")  # fmt: skip
    result = evaluate(tmp_path / "eval", {"probe": probe, "vit": vit}, digits_dir / "test", *flags)
    entry = result["models"]["probe"]
    assert entry["card"] == str(probe / "README.md") and result["models"]["vit"]["card"] is None
    assert not (tmp_path / "vit" / "README.md").exists()

    card = ModelCard.load(probe / "README.md")
    assert card.text == card_before.text  # the card's body is kept
    for key in ("base_model", "tags", "pipeline_tag", "library_name"):
        assert getattr(card.data, key) == getattr(card_before.data, key)
    found = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    for config, set_name in ((None, "test"), ("shifted", "shifted")):
        scored = entry["sets"][set_name]
        assert found[(config, "accuracy")] == pytest.approx(scored["metrics"]["accuracy"])
        assert found[(config, "macro_f1")] == pytest.approx(scored["metrics"]["macro_f1"])
        assert found[(config, "ece")] == pytest.approx(scored["calibration"]["ece"])
    assert found[("corruptions", "mean_corruption_accuracy")] == pytest.approx(
        entry["robustness"]["mean_corruption_accuracy"]
    )
    # The recipe's own test metrics it does not measure stay; its test accuracy is the same number (tested above).
    recipe_metrics = {r.metric_type for r in card_before.data.eval_results}
    assert recipe_metrics - {"accuracy", "macro_f1"} <= {r.metric_type for r in card.data.eval_results}
    index = metadata_load(probe / "README.md")["model-index"][0]["results"]
    assert len(index) == 3  # one entry per dataset/shift: test, shifted, corruptions
    shifted = next(e for e in index if e["dataset"].get("config") == "shifted")
    assert shifted["dataset"]["name"] == "shifted (shifted: validation)"
    assert {m["type"] for m in shifted["metrics"]} == {"accuracy", "macro_f1", "ece"}

    # A re-run replaces its own numbers instead of adding a second copy.
    evaluate(tmp_path / "eval2", {"probe": probe}, digits_dir / "test", *flags)
    assert len(ModelCard.load(probe / "README.md").data.eval_results) == len(card.data.eval_results)


def test_recipe_card_lists_its_ood_and_corruption_numbers_and_an_evaluation_replaces_them(
    recipe_runs, digits_dir, tmp_path
):
    lora = tmp_path / "lora"
    shutil.copytree(recipe_runs["lora"][0], lora)
    results = recipe_runs["lora"][1]
    index = metadata_load(lora / "README.md")["model-index"][0]["results"]
    by_config = {entry["dataset"].get("config"): entry for entry in index}
    assert set(by_config) == {None, "shifted", "corruptions"}
    shifted = by_config["shifted"]
    assert shifted["dataset"]["name"] == "shifted (shifted: validation)" and shifted["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in shifted["metrics"]}
    assert values["accuracy"] == pytest.approx(results["ood_shifted_accuracy"])
    assert values["macro_f1"] == pytest.approx(results["ood_shifted_macro_f1"])
    assert "samples" not in values  # a count is not a quality metric
    corrupted = by_config["corruptions"]
    assert corrupted["dataset"]["name"].endswith("corrupted (gaussian_noise; severities 1,3)")
    values = {m["type"]: m["value"] for m in corrupted["metrics"]}
    assert values == pytest.approx(
        {"mean_corruption_accuracy": results["corruption_mean_accuracy"],
         "relative_accuracy": results["corruption_relative_accuracy"]}
    )  # fmt: skip

    # mm_hf.evaluate --update_card on the same sets replaces these numbers: no entry or metric appears twice.
    flags = ("--ood", f"shifted={digits_dir / 'validation'}", "--corruptions", "gaussian_noise", "--severities", "1,3",
             "--update_card", "--latency_runs", "0")  # fmt: skip
    evaluate(tmp_path / "eval", {"lora": lora}, digits_dir / "test", *flags)
    results_after = ModelCard.load(lora / "README.md").data.eval_results
    keys = [(r.dataset_config, r.metric_type) for r in results_after]
    assert len(keys) == len(set(keys))
    assert len(metadata_load(lora / "README.md")["model-index"][0]["results"]) == 3
