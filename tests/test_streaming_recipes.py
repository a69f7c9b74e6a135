"""--streaming in the fusion recipes (fusion_imagetext_cls.py, video_cls.py) and clip_retrieval.py: a streamed run
trains, skips and reports bad rows, evaluates the map-style test split as `python -m mm_hf.evaluate` does the saved
checkpoint; label spaces and refusals (tests/test_streaming.py covers the classifiers and the shared machinery)."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import REPO, load_recipe
from transformers import AutoModel

from mm_hf.args import DataArguments
from mm_hf.data.multimodal import MultimodalColumns
from mm_hf.data.multimodal_stream import load_multimodal_stream
from mm_hf.data.synthetic import write_imagetext_xor, write_video_dataset
from mm_hf.errors import UserError
from mm_hf.evaluate import main as evaluate
from mm_hf.models.tiny import build_tiny_encoders

LABELS = ["no", "yes"]
RUN = ["--do_train", "--do_predict", "--use_cpu", "true", "--save_strategy", "no", "--report_to", "none",
       "--disable_tqdm", "true", "--learning_rate", "1e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="module")
def xor_shards(tmp_path_factory):
    """The image-text XOR rows (24 train / 8 validation / 8 test) as 2 WebDataset shards of `<key>.png` + `.txt` +
    `.cls` (the label's index; the second sample of shard 0 has its PNG cut in half), and the validation/test
    splits as JSONL files with the same column names (labels as names)."""
    root = tmp_path_factory.mktemp("xor")
    files = write_imagetext_xor(str(root), sizes=(24, 8, 8), seed=0)
    rows = [json.loads(line) for line in open(files["train"])]
    for shard in range(2):
        with tarfile.open(root / f"train-{shard}.tar", "w") as tar:
            for i, row in enumerate(rows[shard::2]):
                png = (root / row["image"]).read_bytes()
                png = png[: len(png) // 2] if (shard, i) == (0, 1) else png
                cls = str(LABELS.index(row["label"])).encode()
                for ext, payload in (("png", png), ("txt", row["text"].encode()), ("cls", cls)):
                    info = tarfile.TarInfo(f"s{shard}_{i:03d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    for split in ("validation", "test"):
        with open(root / f"{split}_wds.jsonl", "w") as f:
            for row in map(json.loads, open(files[split])):
                f.write(json.dumps({"png": row["image"], "txt": row["text"], "cls": row["label"]}) + "\n")
    return root, files


def test_streamed_fusion_run_skips_a_corrupt_image_and_evaluates_as_the_saved_checkpoint(
    encoders, xor_shards, tmp_path, capsys
):
    root, _ = xor_shards
    out = tmp_path / "out"
    results = load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--train_file", str(root / "train-*.tar"), "--test_file", str(root / "test_wds.jsonl"), "--streaming",
        "--image_column", "png", "--text_column", "txt", "--label_column", "cls", "--class_names", *LABELS,
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--max_bad_fraction", "0.2",
        "--finetune_strategy", "full", "--hidden_size", "16", "--max_seq_length", "8", "--output_dir", str(out), *RUN,
    ])  # fmt: skip
    # 4 steps of 8 read the 24 rows more than once: the truncated PNG is met, skipped, named, counted once.
    assert results["skipped_bad_samples"] == 1 and results["train_samples_skipped_per_process"] == [1]
    assert results["train_samples_read"] >= 24 and np.isfinite(results["train_loss"])
    assert "train-0.tar:s0_001.png" in capsys.readouterr().out
    # Trained: the same test rows score differently than before training.
    assert results["test_samples"] == 8 and results["test_loss"] != results["zeroshot_test_loss"]
    # The evaluator reads the test file map-style with the saved processor: the run's own numbers.
    evaluation = evaluate(["--model", f"run={out}", "--test_file", str(root / "test_wds.jsonl"), "--output_dir",
                           str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--disable_tqdm"])  # fmt: skip
    metrics = evaluation["models"]["run"]["sets"]["test"]["metrics"]
    for metric in ("accuracy", "macro_f1", "log_loss", "roc_auc"):
        assert metrics[metric] == pytest.approx(results[f"test_{metric}"], abs=1e-6), metric


@pytest.mark.slow  # two processes, each importing torch and transformers
def test_two_process_streamed_fusion_run_reads_its_own_shard_and_evaluates_each_test_row_once(
    encoders, xor_shards, tmp_path
):
    """`accelerate launch` with 2 gloo processes over the 2 shards: each reads its own (the corrupt PNG is skipped by
    one process only, counted once), both fit the same statistics from the stream's head, and the 7 test rows (one
    process gets a padded batch) are each counted once: the numbers of a one-process evaluation of the checkpoint."""
    from test_distributed import ACCELERATE_CONFIG, free_port

    root, _ = xor_shards
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG, "--multi_gpu",
        "--num_processes", "2", "--main_process_port", str(free_port()),
        os.path.join(REPO, "recipes", "fusion_imagetext_cls.py"),
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--train_file", str(root / "train-*.tar"), "--test_file", str(root / "test_wds.jsonl"), "--streaming",
        "--image_column", "png", "--text_column", "txt", "--label_column", "cls", "--class_names", *LABELS,
        "--max_steps", "6", "--per_device_train_batch_size", "4", "--max_bad_fraction", "0.2", "--finetune_strategy",
        "full", "--hidden_size", "16", "--max_seq_length", "8", "--output_dir", str(out), *RUN,
        "--ddp_find_unused_parameters", "true", "--max_predict_samples", "7",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["skipped_bad_samples"] == 1 and sorted(results["train_samples_skipped_per_process"]) == [0, 1]
    assert all(n >= 12 for n in results["train_samples_read_per_process"])  # 6 steps of 4 over its 12 rows
    assert results["test_samples"] == 7
    evaluation = evaluate(["--model", f"run={out}", "--test_file", str(root / "test_wds.jsonl"), "--output_dir",
                           str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--disable_tqdm",
                           "--max_predict_samples", "7"])  # fmt: skip
    assert evaluation["models"]["run"]["sets"]["test"]["samples"] == 7
    metrics = evaluation["models"]["run"]["sets"]["test"]["metrics"]
    for metric in ("accuracy", "log_loss", "roc_auc"):
        assert metrics[metric] == pytest.approx(results[f"test_{metric}"], abs=1e-6), metric


def test_stream_rows_are_judged_against_the_validation_splits_labels(xor_shards, tmp_path):
    """Without --class_names the label space is the validation split's; a row with a label outside it, a missing
    file or no input at all is skipped and recorded with its reason; good rows keep their inputs."""
    _, files = xor_shards
    rows = [json.loads(line) for line in open(files["train"])][:6]
    rows[1]["label"] = "maybe"
    rows[2]["image"] = "images/gone.png"
    rows[3]["image"] = rows[3]["text"] = None
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.symlink(os.path.dirname(files["train"]) + "/images", tmp_path / "images")
    data = DataArguments(train_file=str(train), validation_file=files["validation"], streaming=True)
    columns = MultimodalColumns(image="image", text="text", labels=["label"])
    splits, space = load_multimodal_stream(data, columns, "single_label_classification")
    assert space.names == LABELS and len(splits["validation"]) == 8
    stream = splits["train"]
    read = list(stream.with_transform(lambda batch: {"labels": batch["labels"], "image": batch["image"]}))
    assert len(read) == 3 and all(os.path.isabs(r["image"]) for r in read)
    seen, bad = stream.log.read()
    reasons = dict(bad)
    assert seen == 6 and len(bad) == 3
    assert "'maybe'" in reasons[str(tmp_path / "images" / os.path.basename(rows[1]["image"]))]
    assert "the validation split" in next(r for r in reasons.values() if "maybe" in r)
    assert "image file not found" in reasons[str(tmp_path / "images" / "gone.png")]
    assert any("every input is missing" in r for r in reasons.values())
    assert len(stream.head(4)) == 3  # statistics rows: the usable ones only


@pytest.mark.parametrize(
    ("extra", "without", "message"),
    [
        ([], None, "--streaming needs --max_steps"),
        (["--max_steps", "2"], "validation", "comes from --class_names"),
        (["--max_steps", "2", "--label_column", "label", "red", "--problem_type", "single_label_classification",
          "binary_classification", "--class_names", "no", "yes"], None, "--class_names names the classes of one"),
        (["--max_steps", "2", "--finetune_strategy", "linear_probe", "--precompute_features", "true"], None,
         "--precompute_features true cannot apply with --streaming"),
    ],
)  # fmt: skip
def test_fusion_streaming_refusals_name_the_flag(encoders, xor_shards, tmp_path, extra, without, message):
    _, files = xor_shards
    data = [arg for split in ("train", "validation", "test") if split != without
            for arg in (f"--{split}_file", files[split])]  # fmt: skip
    argv = ["--vision_model_name_or_path", encoders["vision"], "--image_column", "image", "--label_column", "label",
            "--streaming", "--hidden_size", "16", "--output_dir", str(tmp_path / "out"), *RUN, *data]  # fmt: skip
    with pytest.raises(UserError, match=message):
        load_recipe("fusion_imagetext_cls").main(argv + extra)


@pytest.fixture(scope="module")
def pairs(digits_dir, tmp_path_factory):
    """The digits folders with captions (metadata.jsonl); in train, one image cut short and one row without a
    usable caption."""
    from mm_hf.demo import write_digit_captions

    root = tmp_path_factory.mktemp("pairs") / "digits"
    shutil.copytree(digits_dir, root)
    write_digit_captions(str(root))
    meta = root / "train" / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    cut = root / "train" / rows[5]["file_name"]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    rows[9]["caption"] = ["", "N/A"]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_streamed_retrieval_pairs_train_skip_bad_pairs_and_evaluate_the_whole_gallery(tiny_vtde, pairs, tmp_path):
    out = tmp_path / "out"
    results = load_recipe("clip_retrieval").main([
        "--model_name_or_path", str(tiny_vtde), "--train_dir", str(pairs / "train"), "--test_dir", str(pairs / "test"),
        "--streaming", "--max_steps", "8", "--per_device_train_batch_size", "8", "--max_bad_fraction", "0.1",
        "--max_seq_length", "12", "--finetune_strategy", "full", "--output_dir", str(out), *RUN,
    ])  # fmt: skip
    # 8 steps of 8 read the 48 pairs at least once: both bad ones are met, skipped, named.
    assert results["skipped_bad_samples"] == 2 and results["train_samples_read"] >= 48
    assert np.isfinite(results["train_loss"]) and results["test_samples"] == 20
    before = dict(AutoModel.from_pretrained(tiny_vtde).named_parameters())
    moved = [n for n, p in AutoModel.from_pretrained(out).named_parameters() if not torch.equal(p, before[n])]
    assert any("vision_model" in n for n in moved) and any("text_model" in n for n in moved)
    evaluation = evaluate(["--retrieval", "--model", f"tuned={out}", "--test_dir", str(pairs / "test"), "--output_dir",
                           str(tmp_path / "eval"), "--dataloader_num_workers", "0", "--disable_tqdm",
                           "--latency_runs", "0"])  # fmt: skip
    metrics = evaluation["models"]["tuned"]["sets"]["test"]["metrics"]
    for metric in ("image_to_text_recall@1", "text_to_image_recall@5", "text_to_image_median_rank"):
        assert metrics[metric] == pytest.approx(results[f"test_{metric}"])


def test_retrieval_streaming_refusals_name_the_flag(tiny_vtde, pairs, tmp_path):
    argv = ["--model_name_or_path", str(tiny_vtde), "--train_dir", str(pairs / "train"), "--test_dir",
            str(pairs / "test"), "--output_dir", str(tmp_path / "out"), *RUN]  # fmt: skip
    recipe = load_recipe("clip_retrieval")
    with pytest.raises(UserError, match="--streaming needs --max_steps"):
        recipe.main([*argv, "--streaming"])
    with pytest.raises(UserError, match="--class_names: clip_retrieval trains on captions"):
        recipe.main([*argv, "--streaming", "--max_steps", "2", "--class_names", "a", "b"])
    with pytest.raises(UserError, match="--shuffle_buffer_size only applies with --streaming"):
        recipe.main([*argv, "--shuffle_buffer_size", "10"])


@pytest.mark.slow  # 3.2 s measured on the shared machine (PyAV decoding): over the budget; the image test runs the same path
def test_streamed_video_run(encoders, tmp_path):
    data = write_video_dataset(str(tmp_path / "data"), sizes=(8, 4, 4), seed=1)
    results = load_recipe("video_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--video_column", "video", "--label_column", "label",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--streaming", "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_frames", "2",
        "--hidden_size", "16", "--output_dir", str(tmp_path / "out"), *RUN,
    ])  # fmt: skip
    assert results["test_samples"] == 4 and results["train_samples_read"] >= 8
    assert results["test_loss"] != results["zeroshot_test_loss"] and "skipped_bad_samples" not in results
