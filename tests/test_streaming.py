"""--streaming (WebDataset shards and class folders as datasets IterableDatasets, bad samples skipped and counted) and
--validate_samples (header checks, verdicts cached while the files are unchanged)."""

import io
import json
import os
import subprocess
import sys
import tarfile

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, load_recipe
from PIL import Image
from transformers import TrainingArguments

from mm_hf.args import DataArguments
from mm_hf.data import images
from mm_hf.data.audio import check_audio_header
from mm_hf.data.images import check_image_header, check_images, load_image
from mm_hf.data.streaming import LabelEncoder, SkipLog, SkipUnusable, StreamSkips, load_stream_splits
from mm_hf.data.validation import BadSampleError
from mm_hf.errors import DataError, UserError
from mm_hf.run import load_checked_splits

CLASSES = ["one", "three", "two", "zero"]


def write_shards(train_dir, out_dir, n_shards=4, corrupt=(0, 1, 2)):
    """WebDataset shards of the class folders: `<key>.png` + `<key>.cls` (the class index) per sample; the third
    sample of each shard in `corrupt` has its PNG cut in half. Returns the shard glob."""
    files = sorted(train_dir.glob("*/*.png"))
    os.makedirs(out_dir, exist_ok=True)
    for shard in range(n_shards):
        with tarfile.open(out_dir / f"train-{shard:04d}.tar", "w") as tar:
            for i, path in enumerate(files[shard::n_shards]):
                data = path.read_bytes()
                if shard in corrupt and i == 2:
                    data = data[: len(data) // 2]
                for ext, payload in (("png", data), ("cls", str(CLASSES.index(path.parent.name)).encode())):
                    info = tarfile.TarInfo(f"{path.parent.name}_{path.stem}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(out_dir / "train-*.tar")


def stream_args(model, shards, test_dir, out, *extra):
    return [
        "--model_name_or_path", str(model), "--train_file", shards, "--test_dir", str(test_dir),
        "--image_column", "png", "--label_column", "cls", "--class_names", *CLASSES, "--streaming",
        "--output_dir", str(out), "--do_train", "--use_cpu", "true", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "3", "--learning_rate", "1e-3", "--head_init", "zeroshot",
        "--prompt_templates", "a photo of the digit {}.", "--max_bad_fraction", "0.1", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def test_streamed_webdataset_run_skips_and_reports_corrupt_samples(tiny_vtde, digits_dir, tmp_path, capsys):
    """One process over 4 shards (48 samples, 3 truncated): 12 steps of 4 read the whole stream at least once, so
    every corrupt sample is met, skipped, named; the map-style test split is evaluated whole."""
    shards = write_shards(digits_dir / "train", tmp_path / "shards")
    out = tmp_path / "out"
    results = load_recipe("clip_imagecls").main(
        stream_args(tiny_vtde, shards, digits_dir / "test", out, "--max_steps", "12")
    )
    assert results["skipped_bad_samples"] == 3 and results["train_samples_skipped_per_process"] == [3]
    assert results["train_samples_read"] >= 48 and "train_samples" not in results
    assert results["test_samples"] == 20 and np.isfinite(results["train_loss"])
    report = json.loads((out / "classification_report.json").read_text())
    assert sum(c["support"] for c in report["per_class"].values()) == 20
    printed = capsys.readouterr().out
    assert "Skipped 3 unreadable samples" in printed and "train-0000.tar:" in printed and "truncated" in printed
    assert json.loads((out / "all_results.json").read_text())["skipped_bad_samples"] == 3


@pytest.mark.slow  # ~55 s on a busy 2-core machine: two processes, each importing torch and transformers
def test_two_process_streamed_run_reads_disjoint_shards_and_evaluates_each_test_image_once(
    tiny_vtde, digits_dir, tmp_path
):
    """`accelerate launch` with 2 gloo processes over 4 WebDataset shards with 3 corrupt samples: each process reads
    its own shards (the corrupt samples each process skipped add up to 3: had both read every shard, or had the
    stream been split twice, they would not), the run reports them, and the test split counts each image once."""
    from test_distributed import ACCELERATE_CONFIG, free_port

    shards = write_shards(digits_dir / "train", tmp_path / "shards")
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG, "--multi_gpu",
        "--num_processes", "2", "--main_process_port", str(free_port()), os.path.join(REPO, "recipes", "clip_imagecls.py"),
        *stream_args(tiny_vtde, shards, digits_dir / "test", out, "--max_steps", "8", "--do_predict"),
        "--ddp_find_unused_parameters", "false",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stderr.count("world_size=2 (DistributedType.MULTI_CPU)") == 1
    results = json.loads((out / "all_results.json").read_text())
    assert results["skipped_bad_samples"] == 3
    skipped = results["train_samples_skipped_per_process"]
    assert len(skipped) == 2 and sum(skipped) == 3 and all(n > 0 for n in results["train_samples_read_per_process"])
    assert proc.stdout.count("Skipped 3 unreadable samples") == 1
    assert results["test_samples"] == 20
    for prefix in ("zeroshot_", ""):
        report = json.loads((out / f"{prefix}classification_report.json").read_text())
        assert sum(c["support"] for c in report["per_class"].values()) == 20
        matrix = json.loads((out / f"{prefix}confusion_matrix.json").read_text())
        assert np.asarray(matrix["matrix"]).sum(axis=1).tolist() == [5, 5, 5, 5]


def test_too_many_bad_samples_stop_the_run(tmp_path):
    """At the end of training, over every process's records; early in a worker once enough samples were read."""
    folder = tmp_path / "records"
    folder.mkdir()
    log = SkipLog(str(folder), max_bad_fraction=0.02)
    log.record(40, [("a.png", "truncated"), ("b.png", "truncated")])  # 5 %, but few samples to judge a worker by
    log.record(40, [("c.png", "empty file")])  # (fewer than 10 / 0.02)
    skips = StreamSkips(SkipLog(str(folder), 0.02), {"test": []})
    state = type("State", (), {"is_world_process_zero": True})()
    with pytest.raises(DataError, match=r"3 of 80 training samples .* --max_bad_fraction 0.02") as error:
        skips.on_train_end(None, state, None)
    assert "a.png: truncated" in str(error.value) and skips["train"][0] == ("a.png", "truncated")
    assert not folder.exists()  # the records are gone with the run
    (tmp_path / "worker").mkdir()
    worker = SkipLog(str(tmp_path / "worker"), max_bad_fraction=0.05)
    with pytest.raises(DataError, match="so far in one data worker"):
        worker.record(200, [(f"{i}.png", "truncated") for i in range(11)])


def test_skip_unusable_keeps_good_rows_and_records_bad_ones(digits_dir, tmp_path):
    good = sorted((digits_dir / "train" / "one").glob("*.png"))[:2]
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[0].read_bytes()[:60])
    log = SkipLog(str(tmp_path / "log"), max_bad_fraction=0.5)
    os.makedirs(log.folder)
    calls = []

    def transform(batch):  # one call per batch, as a padding transform needs
        calls.append(len(batch["image"]))
        return {"size": [load_image(p).size for p in batch["image"]], "labels": batch["labels"]}

    skip = SkipUnusable(transform, "image", "label", LabelEncoder(CLASSES), log)
    out = skip({"image": [str(good[0]), str(cut), str(good[1]), str(good[1])], "label": ["one", "one", "two", "ten"]})
    assert out["labels"] == [0, 2] and len(out["size"]) == 2
    assert calls[-1] == 2  # the usable rows, transformed together once the bad one was found
    seen, bad = log.read()
    assert seen == 4 and [source for source, _ in bad] == [str(good[1]), str(cut)]
    assert "'ten' is not one of the classes" in bad[0][1] and "truncated" in bad[1][1]


def test_stream_labels_need_class_names_unless_the_data_names_them(digits_dir, tmp_path):
    rows = [{"image": str(p), "label": p.parent.name} for p in sorted((digits_dir / "train").glob("*/*.png"))]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = dict(train_file=str(train), test_dir=str(digits_dir / "test"), streaming=True)
    with pytest.raises(DataError, match="--class_names"):
        load_stream_splits(DataArguments(**args), "image", "label")
    splits = load_stream_splits(DataArguments(**args, class_names=CLASSES), "image", "label")
    assert splits["train"].features["labels"].names == CLASSES and len(splits["test"]) == 20
    # A class folder names its classes; its file list becomes a sharded stream.
    folder = load_stream_splits(
        DataArguments(train_dir=str(digits_dir / "train"), test_dir=str(digits_dir / "test")), "image", "label"
    )
    stream = folder["train"].with_transform(lambda b: {"labels": b["labels"], "path": b["image"]})
    labels = sorted(row["labels"] for row in stream)
    assert folder["train"].stream.num_shards == 48 and labels == sorted([0, 1, 2, 3] * 12)
    # A test label outside the stream's classes is refused, naming the split's source.
    with pytest.raises(DataError, match="'zero' is not one of the classes"):
        load_stream_splits(DataArguments(**args, class_names=CLASSES[:3]), "image", "label")


def test_header_check_opens_without_decoding(digits_dir, tmp_path):
    png = sorted((digits_dir / "train" / "one").glob("*.png"))[0]
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "big.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "big.png").read_bytes()[:-30])  # pixel data cut: the header is whole
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    check_image_header(str(png))
    check_image_header({"bytes": cut.read_bytes(), "path": "cut.png"})
    check_image_header(str(cut))  # passes the header check ...
    with pytest.raises(BadSampleError, match="truncated"):  # ... only decoding finds it
        load_image(str(cut))
    for name, reason in (("empty.png", "empty file"), ("notes.png", "not an image"), ("gone.png", "file not found")):
        with pytest.raises(BadSampleError, match=reason):
            check_image_header(str(tmp_path / name))
    sf.write(tmp_path / "clip.wav", np.zeros(800, dtype=np.float32), 16000)
    check_audio_header(str(tmp_path / "clip.wav"))
    with pytest.raises(BadSampleError, match="not audio"):
        check_audio_header(str(tmp_path / "notes.png"))


def test_verdict_is_cached_until_a_file_changes(digits_dir, tmp_path, monkeypatch):
    paths = [str(p) for p in sorted((digits_dir / "train" / "one").glob("*.png"))[:4]]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    ds = datasets.Dataset.from_dict({"image": [*paths, str(bad)]})
    cache = str(tmp_path / "cache")
    kept, skipped = check_images(ds, "image", skip_bad=True, mode="header", cache=True, cache_dir=cache)
    assert len(kept) == 4 and skipped == [(str(bad), "empty file (0 bytes)")]
    opened = []
    monkeypatch.setattr(images, "check_image_header", lambda source: opened.append(source))
    kept, skipped = check_images(ds, "image", skip_bad=True, mode="header", cache=True, cache_dir=cache)
    assert opened == [] and len(kept) == 4 and skipped[0][0] == str(bad)  # the other processes / the next run
    Image.new("RGB", (8, 8)).save(bad)  # fixed: a new size and time, so checked again
    kept, skipped = check_images(ds, "image", skip_bad=True, mode="header", cache=True, cache_dir=cache)
    assert len(opened) == 5 and len(kept) == 5 and skipped == []


def test_validate_samples_modes_in_the_recipe_loader(digits_dir, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        for path in sorted((digits_dir / split).glob("*/*.png")):
            (data / split / path.parent.name).mkdir(parents=True, exist_ok=True)
            (data / split / path.parent.name / path.name).write_bytes(path.read_bytes())
    cut = next((data / "train" / "two").glob("*.png"))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the header is whole, the pixels are not
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True)

    def load(mode):
        data_args = DataArguments(train_dir=str(data / "train"), test_dir=str(data / "test"), validate_samples=mode)
        return load_checked_splits(
            data_args,
            training_args,
            str(tmp_path / "cache"),
            "image",
            "label",
            check_images,
            input_flag="--image_column",
        )

    with pytest.raises(BadSampleError, match=cut.name):
        load("full")
    for mode in ("header", "none"):  # header reads no pixels: the cut is found only by decoding
        splits, skipped = load(mode)
        assert not any(skipped.values()) and len(splits["train"]) + len(splits["validation"]) == 48


@pytest.mark.parametrize(
    ("recipe", "flags", "message"),
    [
        ("clip_imagecls", ["--max_bad_fraction", "0.5"], "--max_bad_fraction only applies with --streaming"),
        ("clip_imagecls", ["--streaming"], "--streaming needs --max_steps"),
        ("clip_imagecls", ["--streaming", "--max_steps", "2", "--eval_strategy", "epoch"], "--eval_strategy epoch"),
        ("clip_imagecls", ["--streaming", "--max_steps", "2", "--train_val_split", "0.2"], "--train_val_split"),
        ("fusion_imagetext_cls", ["--max_bad_fraction", "0.5"], "--max_bad_fraction only applies with --streaming"),
        ("fusion_imagetext_cls", ["--validate_samples", "header"], "decodes every sample up front"),
    ],
)
def test_flags_that_cannot_apply_are_refused(recipe, flags, message, tiny_vtde, digits_dir, tmp_path):
    if recipe == "clip_imagecls":
        common = ["--model_name_or_path", str(tiny_vtde), "--train_dir", str(digits_dir / "train")]
    else:
        common = ["--vision_model_name_or_path", str(tiny_vtde), "--train_file", str(tmp_path / "x.csv")]
    argv = [*common, "--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu", "true", "--report_to", "none"]
    with pytest.raises(UserError, match=message):
        load_recipe(recipe).main(argv + flags)


def test_streamed_audio_class_folders_with_a_validation_split(tiny_wav2vec2, tmp_path):
    """audio_cls streams a class folder (its file list as a sharded stream), skips an empty clip, and evaluates the
    map-style validation and test splits whole."""
    from mm_hf.demo import write_tones_audiofolder

    root = tmp_path / "tones"
    write_tones_audiofolder(str(root), per_class=(6, 2, 4), seed=0)
    (root / "train" / "high" / "empty.wav").write_bytes(b"")
    results = load_recipe("audio_cls").main([
        "--model_name_or_path", str(tiny_wav2vec2), "--output_dir", str(tmp_path / "out"), "--streaming",
        "--train_dir", str(root / "train"), "--validation_dir", str(root / "validation"), "--test_dir",
        str(root / "test"), "--do_train", "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--max_bad_fraction", "0.1", "--max_length_seconds", "0.5", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no",
    ])  # fmt: skip
    assert results["skipped_bad_samples"] == 1 and results["train_samples_read"] >= 25
    assert results["test_samples"] == 16 and results["eval_samples"] == 8 and np.isfinite(results["train_loss"])


def test_dataset_folder_streams_with_its_classlabel_and_reads_its_test_split_whole(digits_dir, tmp_path):
    """--dataset_name (a Hub id, or here a local dataset folder of parquet files) streams its train split, names the
    classes from its ClassLabel feature, and reads its test split whole, undecoded."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    for split in ("train", "test"):
        files = sorted(str(p) for p in (digits_dir / split).glob("*/*.png"))
        labels = [CLASSES.index(os.path.basename(os.path.dirname(f))) for f in files]
        ds = datasets.Dataset.from_dict({"image": files, "label": labels}, features=features)
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
    splits = load_stream_splits(DataArguments(dataset_name=str(tmp_path), streaming=True), "image", "label")
    assert splits["train"].features["labels"].names == CLASSES
    rows = list(
        splits["train"].with_transform(lambda b: {"labels": b["labels"], "path": [x["path"] for x in b["image"]]})
    )
    assert len(rows) == 48 and all(CLASSES[r["labels"]] in r["path"] for r in rows)
    assert len(splits["test"]) == 20 and splits["test"].features["image"].decode is False


def test_evaluate_cli_refuses_the_flags_it_does_not_read(tmp_path):
    from mm_hf.evaluate.cli import main

    with pytest.raises(UserError, match="--streaming: mm_hf.evaluate does not stream"):
        main(["--model", f"a={tmp_path}", "--test_dir", str(tmp_path), "--streaming"])
    with pytest.raises(UserError, match="--validate_samples header: mm_hf.evaluate decodes every sample up front"):
        main(["--model", f"a={tmp_path}", "--test_dir", str(tmp_path), "--validate_samples", "header"])
