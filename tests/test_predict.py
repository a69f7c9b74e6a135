"""python -m mm_hf.predict on tiny models: predictions equal the model's own forward pass, resume, bad rows, kinds."""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile

import datasets
import pytest
import torch
from conftest import REPO, load_recipe
from transformers import (
    AutoFeatureExtractor,
    AutoProcessor,
    CLIPModel,
    CLIPProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from mm_hf.data.audio import AudioTransform
from mm_hf.data.synthetic import write_imagetext_xor, write_video_dataset
from mm_hf.data.transforms import build_image_transform
from mm_hf.demo import write_tones_audiofolder
from mm_hf.errors import UserError
from mm_hf.evaluate.fusion import load_fusion
from mm_hf.models import build_audio_classifier, load_finetuned
from mm_hf.models.tiny import build_tiny_encoders
from mm_hf.predict import main
from mm_hf.predict.heads import Head
from mm_hf.predict.output import flatten

ACCELERATE_CONFIG = os.path.join(REPO, "recipes", "accelerate", "cpu_2proc.yaml")
FAST = ["--num_workers", "0", "--disable_tqdm", "--batch_size", "4"]


def predict(checkpoint, data, output, *extra):
    return main([str(checkpoint), "--data", str(data), "--output", str(output), *FAST, *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def lora_run(tiny_vtde, digits_dir, tmp_path_factory):
    """A 2-step LoRA run of recipes/clip_imagecls.py: an adapter folder (the base is tiny_vtde)."""
    out = tmp_path_factory.mktemp("lora")
    load_recipe("clip_imagecls").main([
        "--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--train_dir", str(digits_dir / "train"),
        "--validation_dir", str(digits_dir / "validation"), "--do_train", "--finetune_strategy", "lora",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no", "--prompt_templates", "a photo of the digit {}.",
    ])  # fmt: skip
    assert os.path.exists(out / "adapter_config.json")
    return out


@torch.no_grad()
def forward_probabilities(run, paths):
    model = load_finetuned(str(run)).eval()
    transform = build_image_transform(AutoProcessor.from_pretrained(run).image_processor, train=False)
    pixel_values = torch.stack(transform({"image": paths})["pixel_values"])
    return model(pixel_values=pixel_values).logits.softmax(-1), model.config.id2label


def test_folder_predictions_equal_the_models_forward_pass_in_jsonl_and_csv(lora_run, digits_dir, tmp_path):
    test = digits_dir / "test"
    result = predict(lora_run, test, tmp_path / "p.jsonl", "--top_k", "3")
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert result == {"predicted": 20, "errors": 0, "skipped": 0, "output": str(tmp_path / "p.jsonl"), "processes": 1}
    assert [r["id"] for r in rows] == sorted(os.path.relpath(p, test) for p in map(str, test.rglob("*.png")))
    probabilities, id2label = forward_probabilities(lora_run, [str(test / r["id"]) for r in rows])
    for row, p in zip(rows, probabilities, strict=True):
        values, indices = p.topk(3)
        assert [e["label"] for e in row["top_k"]] == [id2label[i] for i in indices.tolist()]
        assert [e["score"] for e in row["top_k"]] == pytest.approx(values.tolist(), abs=1e-6)
        assert (row["label"], row["score"], row["error"]) == (row["top_k"][0]["label"], row["top_k"][0]["score"], None)

    predict(lora_run, test, tmp_path / "p.csv", "--top_k", "3")
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "label", "score", "label_1", "score_1", "label_2", "score_2", "label_3",
                              "score_3", "error"]  # fmt: skip
    for row, cells in zip(rows, table, strict=True):
        assert cells["id"] == row["id"] and cells["label_2"] == row["top_k"][1]["label"] and cells["error"] == ""
        assert float(cells["score_3"]) == pytest.approx(row["top_k"][2]["score"], abs=1e-12)


def test_resume_after_an_interrupted_run_gives_the_file_of_one_pass(lora_run, digits_dir, tmp_path):
    test = digits_dir / "test"
    once = tmp_path / "once.jsonl"
    predict(lora_run, test, once, "--chunk_size", "4")
    lines = once.read_bytes().splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_bytes(b"".join(lines[:7]) + lines[7][:25])  # 7 whole rows and a torn one: a crash mid-append
    shutil.copy(str(once) + ".predict.json", str(resumed) + ".predict.json")
    result = predict(lora_run, test, resumed, "--chunk_size", "4")
    assert (result["skipped"], result["predicted"]) == (7, 13)
    # The same rows in the same order, each once; scores to float rounding (batches start at other samples).
    expected, got = read_jsonl(once), read_jsonl(resumed)
    assert [(r["id"], r["label"]) for r in got] == [(r["id"], r["label"]) for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert predict(lora_run, test, resumed)["predicted"] == 0  # complete: nothing done twice
    with pytest.raises(UserError, match="another run"):
        predict(lora_run, test, resumed, "--top_k", "2")  # other columns: refused, not mixed into the file


def test_corrupt_image_gets_an_error_row_and_the_others_are_predicted_with_kept_columns(lora_run, digits_dir, tmp_path):
    test = digits_dir / "test"
    paths = sorted(str(p) for p in test.rglob("*.png"))[:6]
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [{"file": p, "source": "digits", "key": f"k{i}"} for i, p in enumerate(paths)]
    rows.insert(2, {"file": "broken.png", "source": "upload", "key": "bad"})  # relative to the file's folder
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = predict(lora_run, tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--image_column", "file",
                     "--keep_columns", "source,file", "--id_column", "key")  # fmt: skip
    assert (result["predicted"], result["errors"]) == (6, 1)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [r["key"] for r in rows]
    assert [(r["source"], r["file"]) for r in out] == [(r["source"], r["file"]) for r in rows]
    bad = out[2]
    assert "broken.png" in bad["error"] and bad["label"] is None and bad["top_k"] is None
    probabilities, id2label = forward_probabilities(lora_run, paths)
    good = [r for r in out if r["error"] is None]
    assert [r["label"] for r in good] == [id2label[i] for i in probabilities.argmax(-1).tolist()]
    assert [r["score"] for r in good] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-6)


def test_zero_shot_dual_encoder_over_labels_equals_clip_similarities(tiny_clip, colours_dir, tmp_path):
    test = colours_dir / "test"
    labels = ["red", "green", "blue"]
    predict(tiny_clip, test, tmp_path / "z.jsonl", "--labels", ",".join(labels), "--prompt_templates", "a {}.")
    rows = read_jsonl(tmp_path / "z.jsonl")
    assert len(rows) == 18 and not any(r["error"] for r in rows)  # the folder's metadata.jsonl is no image: skipped
    processor, model = CLIPProcessor.from_pretrained(tiny_clip), CLIPModel.from_pretrained(tiny_clip).eval()
    transform = build_image_transform(processor.image_processor, train=False)
    pixel_values = torch.stack(transform({"image": [str(test / r["id"]) for r in rows]})["pixel_values"])
    text = processor.tokenizer([f"a {label}." for label in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, **text).logits_per_image.softmax(-1)
    for row, p in zip(rows, expected, strict=True):
        expected_scores = dict(zip(labels, p.tolist(), strict=True))
        assert {e["label"]: e["score"] for e in row["top_k"]} == pytest.approx(expected_scores, abs=1e-5)
    with pytest.raises(UserError, match="--labels a,b,c"):
        predict(tiny_clip, test, tmp_path / "none.jsonl")


def test_audio_classifier_equals_its_forward_pass(tiny_wav2vec2, tmp_path):
    tones = tmp_path / "tones"
    write_tones_audiofolder(str(tones), per_class=(1, 1, 2), seed=0)
    run = tmp_path / "audio"
    labels = sorted(os.listdir(tones / "test"))
    model = build_audio_classifier(tiny_wav2vec2, dict(enumerate(labels)), head_dropout=0.0).eval()
    model.save_pretrained(run)
    extractor = AutoFeatureExtractor.from_pretrained(tiny_wav2vec2)
    extractor.save_pretrained(run)
    predict(run, tones / "test", tmp_path / "a.jsonl", "--max_length_seconds", "0.5", "--batch_size", "16")
    rows = read_jsonl(tmp_path / "a.jsonl")
    transform = AudioTransform(extractor, max_length_seconds=0.5)
    inputs = transform({"audio": [str(tones / "test" / r["id"]) for r in rows]})
    with torch.no_grad():
        expected = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits.softmax(-1)
    assert len(rows) == 2 * len(labels)
    assert [r["label"] for r in rows] == [labels[i] for i in expected.argmax(-1).tolist()]
    assert [r["score"] for r in rows] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "binary_classification"])
def test_fusion_checkpoint_reads_its_runs_columns_and_equals_its_forward_pass(problem_type, tmp_path):
    """A fusion_imagetext_cls run (image + text, some rows missing one): its columns come from run_config.yaml; a
    binary head is thresholded at the run's own --threshold (0.3)."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    data = write_imagetext_xor(str(tmp_path / "data"), sizes=(16, 4, 10), seed=0, missing_rate=0.2)
    run = tmp_path / "run"
    load_recipe("fusion_imagetext_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--text_model_name_or_path", encoders["text"],
        "--image_column", "image", "--text_column", "text", "--label_column", "label",
        "--problem_type", problem_type, "--threshold", "0.3",
        "--train_file", data["train"], "--validation_file", data["validation"], "--output_dir", str(run),
        "--do_train", "--use_cpu", "true", "--max_steps", "1", "--per_device_train_batch_size", "8", "--fusion",
        "concat", "--hidden_size", "32", "--max_seq_length", "12", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true",
    ])  # fmt: skip
    result = predict(run, data["test"], tmp_path / "f.csv", "--keep_columns", "text")
    assert (result["predicted"], result["errors"]) == (10, 0)
    with open(tmp_path / "f.csv", newline="") as f:
        table = list(csv.DictReader(f))
    model, processor = load_fusion(str(run))
    rows = [json.loads(line) for line in open(data["test"])]
    base = os.path.dirname(data["test"])
    batch = {"image": [os.path.join(base, r["image"]) if r["image"] else None for r in rows],
             "text": [r["text"] for r in rows]}  # fmt: skip
    inputs = processor.transform(train=False)(batch)
    with torch.no_grad():
        logits = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits
    names = model.config.tasks[0]["labels"]
    assert [c["id"] for c in table] == [str(i) for i in range(10)]
    assert [c["text"] for c in table] == [r["text"] or "" for r in rows]
    if problem_type == "binary_classification":
        positive = logits[:, 0].sigmoid()
        assert [c["label"] for c in table] == [names[int(p >= 0.3)] for p in positive.tolist()]
        assert [float(c["probability"]) for c in table] == pytest.approx(positive.tolist(), abs=1e-5)
        ordered = sorted(positive.tolist())  # --threshold overrides the run's: half the rows on each side
        middle = (ordered[4] + ordered[5]) / 2
        predict(run, data["test"], tmp_path / "t.jsonl", "--threshold", str(middle))
        assert [r["label"] for r in read_jsonl(tmp_path / "t.jsonl")] == [
            names[int(p >= middle)] for p in positive.tolist()
        ]
    else:
        expected = logits.softmax(-1)
        assert [c["label"] for c in table] == [names[i] for i in expected.argmax(-1).tolist()]
        assert [float(c["score"]) for c in table] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)
    with pytest.raises(UserError, match="--image_column: a fusion checkpoint reads the columns"):
        predict(run, data["test"], tmp_path / "g.csv", "--image_column", "picture")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A plain transformers ViT image classifier (3 labels) with its image processor: no training needed."""
    folder = tmp_path_factory.mktemp("vit")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=64, id2label={0: "a", 1: "b", 2: "c"})  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_plain_transformers_classifier_on_a_hub_style_dataset_with_embedded_images(
    streaming, tiny_vit, digits_dir, tmp_path
):
    """A transformers ViT checkpoint over a parquet dataset (--dataset_name, images stored as bytes, as on the Hub),
    read whole or as a stream."""
    paths = sorted(str(p) for p in (digits_dir / "test").rglob("*.png"))[:5]
    table = datasets.Dataset.from_dict({"image": paths, "name": [f"n{i}" for i in range(5)]})
    (tmp_path / "hub").mkdir()
    table.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "hub" / "test.parquet"))
    main([str(tiny_vit), "--dataset_name", str(tmp_path / "hub"), "--output", str(tmp_path / "v.jsonl"),
          "--keep_columns", "name,image", "--id_column", "name", "--top_k", "2", *FAST,
          *(["--streaming"] if streaming else [])])  # fmt: skip
    rows = read_jsonl(tmp_path / "v.jsonl")
    assert [(r["id"], r["name"]) for r in rows] == [(f"n{i}", f"n{i}") for i in range(5)]
    assert all(r["image"].endswith(".png") for r in rows)  # an embedded image is kept as its path, not its bytes
    model = ViTForImageClassification.from_pretrained(tiny_vit).eval()
    processor = ViTImageProcessor.from_pretrained(tiny_vit)
    pixel_values = torch.stack(build_image_transform(processor, train=False)({"image": paths})["pixel_values"])
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits.softmax(-1)
    assert [r["label"] for r in rows] == [model.config.id2label[i] for i in expected.argmax(-1).tolist()]
    assert [r["top_k"][1]["score"] for r in rows] == pytest.approx(expected.topk(2).values[:, 1].tolist(), abs=1e-6)


def write_shards(folder, samples: list[tuple[str, str]], per_shard: int) -> str:
    """WebDataset shards (`<key>.png` + `<key>.json`) of (key, image path) pairs; returns their glob."""
    folder.mkdir()
    for start in range(0, len(samples), per_shard):
        with tarfile.open(folder / f"shard-{start // per_shard:03d}.tar", "w") as tar:
            for key, path in samples[start : start + per_shard]:
                for name, data in ((f"{key}.png", open(path, "rb").read()),
                                   (f"{key}.json", json.dumps({"file": os.path.basename(path)}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / "shard-*.tar")


def same_rows(got, expected):
    assert [(r["id"], r["label"], r["error"] is None) for r in got] == [
        (r["id"], r["label"], r["error"] is None) for r in expected
    ]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_streaming_a_jsonl_and_webdataset_shards_equals_the_map_style_pass_and_resumes(tiny_vit, digits_dir, tmp_path):
    """--streaming: the same rows as reading the data whole (a corrupt image an error row, in order also with two
    DataLoader workers); an interrupted streamed output resumes by id; WebDataset shards give the same predictions."""
    paths = sorted(str(p) for p in (digits_dir / "test").rglob("*.png"))[:10]
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [{"image": p, "key": f"k{i}"} for i, p in enumerate(paths)]
    rows.insert(3, {"image": "broken.png", "key": "bad"})  # relative to the file's folder
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ("--id_column", "key", "--keep_columns", "image", "--chunk_size", "3")
    whole = predict(tiny_vit, tmp_path / "in.jsonl", tmp_path / "map.jsonl", *flags)
    streamed = predict(tiny_vit, tmp_path / "in.jsonl", tmp_path / "s.jsonl", *flags, "--streaming",
                       "--num_workers", "2")  # fmt: skip
    assert (streamed["predicted"], streamed["errors"]) == (whole["predicted"], whole["errors"]) == (10, 1)
    expected = read_jsonl(tmp_path / "map.jsonl")
    same_rows(read_jsonl(tmp_path / "s.jsonl"), expected)
    assert [r["image"] for r in read_jsonl(tmp_path / "s.jsonl")] == [r["image"] for r in rows]

    lines = (tmp_path / "s.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "s.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:20])  # a crash mid-append
    resumed = predict(tiny_vit, tmp_path / "in.jsonl", tmp_path / "s.jsonl", *flags, "--streaming")
    assert (resumed["predicted"], resumed["errors"], resumed["skipped"]) == (7, 0, 4)  # the bad row was among the 4
    same_rows(read_jsonl(tmp_path / "s.jsonl"), expected)

    shards = write_shards(tmp_path / "shards", [(f"k{i}", p) for i, p in enumerate(paths)], per_shard=4)
    flags = ("--image_column", "png", "--id_column", "__key__", "--keep_columns", "json")
    predict(tiny_vit, shards, tmp_path / "wm.jsonl", *flags)
    predict(tiny_vit, shards, tmp_path / "ws.jsonl", *flags, "--streaming")
    from_shards = read_jsonl(tmp_path / "ws.jsonl")
    same_rows(from_shards, read_jsonl(tmp_path / "wm.jsonl"))
    same_rows(from_shards, [r for r in expected if r["id"] != "bad"])
    assert [r["json"]["file"] for r in from_shards] == [os.path.basename(p) for p in paths]
    with pytest.raises(UserError, match="--streaming: .* is a folder"):
        predict(tiny_vit, digits_dir / "test", tmp_path / "f.jsonl", "--streaming")


def test_heads_multilabel_thresholds_binary_and_regression_rows():
    logits = torch.tensor([[2.0, -1.0, 0.1], [-3.0, 0.0, 5.0]])
    rows = Head("multi_label_classification", ["a", "b", "c"], threshold=0.5).fields(logits)
    assert [r["labels"] for r in rows] == [["a", "c"], ["b", "c"]]  # sigmoid(0) = 0.5 is >= the threshold
    assert rows[0]["scores"]["b"] == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())
    assert Head("multi_label_classification", ["a", "b", "c"], threshold=0.85).fields(logits)[0]["labels"] == ["a"]
    binary = Head("binary_classification", ["no", "yes"], threshold=0.3, prefix="click.").fields(logits[:, :1])
    assert [(r["click.label"], round(r["click.probability"], 4)) for r in binary] == [("yes", 0.8808), ("no", 0.0474)]
    regression = Head("regression", ["x", "y", "z"]).fields(logits)
    assert regression[1] == {"values": {"x": -3.0, "y": 0.0, "z": 5.0}}
    assert flatten({"id": "1", **regression[1], "labels": ["a"], "error": None}) == {
        "id": "1", "values.x": -3.0, "values.y": 0.0, "values.z": 5.0, "labels": '["a"]', "error": None
    }  # fmt: skip


def test_unfinished_run_and_adapter_without_its_base_are_refused_by_name(lora_run, digits_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    for step in (500, 1000):
        (unfinished / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(
        UserError, match=r"only the Trainer checkpoints checkpoint-500, checkpoint-1000.*did not finish"
    ):
        predict(unfinished, digits_dir / "test", tmp_path / "x.jsonl")
    orphan = tmp_path / "orphan"
    shutil.copytree(lora_run, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved_base")
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserError, match=f"LoRA adapter of the base model {tmp_path / 'moved_base'}, which is not there"
    ):
        predict(orphan, digits_dir / "test", tmp_path / "x.jsonl")
    with pytest.raises(UserError, match="--labels is for zero-shot"):
        predict(lora_run, digits_dir / "test", tmp_path / "x.jsonl", "--labels", "a,b")


def test_two_process_launch_writes_the_file_of_one_process(lora_run, digits_dir, tmp_path):
    """accelerate launch on 2 gloo processes: each predicts half of the samples not yet done into a part file, the
    main process appends the parts in order. A part left by a crashed sharded run is merged first, not redone."""
    test = digits_dir / "test"
    predict(lora_run, test, tmp_path / "one.csv")
    one = list(csv.DictReader(open(tmp_path / "one.csv", newline="")))
    out = tmp_path / "two.csv"
    with open(out, "w", newline="") as f:  # an interrupted earlier run: 3 rows in the output, 2 in a leftover part
        f.write(",".join(one[0]) + "\n")
        csv.DictWriter(f, list(one[0]), lineterminator="\n").writerows(one[:3])
    shutil.copy(tmp_path / "one.csv.predict.json", str(out) + ".predict.json")
    with open(tmp_path / "two.part-00001-of-00002.csv", "w", newline="") as f:
        f.write(",".join(one[0]) + "\n")
        csv.DictWriter(f, list(one[0]), lineterminator="\n").writerows(one[10:12])
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG, "--multi_gpu",
        "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "mm_hf.predict", str(lora_run),
        "--data", str(test), "--output", str(out), "--device", "cpu", *FAST,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Predicted 15 sample(s) (0 unreadable, with an `error`; 5 already there)" in proc.stdout  # once, totals
    assert proc.stdout.count("Predicted") == 1
    two = list(csv.DictReader(open(out, newline="")))
    order = [*range(3), 10, 11, *range(3, 10), *range(12, 20)]  # the leftover part's rows, then the shards in order
    assert [r["id"] for r in two] == [one[i]["id"] for i in order]
    assert [r["label"] for r in two] == [one[i]["label"] for i in order]
    assert [float(r["score"]) for r in two] == pytest.approx([float(one[i]["score"]) for i in order], abs=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["one.csv", "one.csv.predict.json", "two.csv", "two.csv.predict.json"]


def test_video_checkpoint_with_sound_track_and_transcript_equals_its_forward_pass(tiny_wav2vec2, tmp_path):
    """A recipes/video_cls.py run (frames + the clip's own sound track + a transcript) over a JSONL of video paths:
    the rows equal the saved model's forward pass; a corrupt or missing video is an error row naming the file, a
    blank cell a missing modality (predicted with the placeholder, as in the recipe); a rerun resumes."""
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    data = write_video_dataset(str(tmp_path / "data"), sizes=(4, 2, 5), seed=0)
    run = tmp_path / "run"
    load_recipe("video_cls").main([
        "--vision_model_name_or_path", encoders["vision"], "--audio_model_name_or_path", tiny_wav2vec2,
        "--audio_from_video", "--text_model_name_or_path", encoders["text"], "--text_column", "transcript",
        "--video_column", "video", "--label_column", "label", "--train_file", data["train"],
        "--validation_file", data["validation"], "--output_dir", str(run), "--do_train", "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--hidden_size", "32", "--num_frames", "4", "--max_seq_length", "12",
        "--max_length_seconds", "0.5", "--temporal_pooling", "mean", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--save_strategy", "no", "--eval_strategy", "no",
    ])  # fmt: skip
    rows = [json.loads(line) for line in open(data["test"])]
    (tmp_path / "data" / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    rows.insert(1, {"video": "videos/broken.mp4", "transcript": "a broken clip", "label": "red-to-blue"})
    rows.insert(3, {"video": "videos/gone.mp4", "transcript": "a moved clip", "label": "red-to-blue"})
    rows.append({"video": "", "transcript": "no clip at all", "label": "red-to-blue"})
    table = tmp_path / "data" / "predict.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "v.jsonl"
    result = predict(run, table, out, "--keep_columns", "video", "--chunk_size", "2", "--top_k", "2")
    assert (result["predicted"], result["errors"]) == (6, 2)
    got = read_jsonl(out)
    assert [r["video"] for r in got] == [r["video"] for r in rows]
    assert "broken.mp4" in got[1]["error"] and got[1]["label"] is None
    assert "gone.mp4" in got[3]["error"] and got[3]["top_k"] is None
    good = [i for i, r in enumerate(got) if r["error"] is None]
    assert good == [0, 2, 4, 5, 6, 7]
    model, processor = load_fusion(str(run))
    base = tmp_path / "data"
    batch = {"video": [str(base / rows[i]["video"]) if rows[i]["video"] else None for i in good],
             "text": [rows[i]["transcript"] for i in good]}  # fmt: skip
    inputs = processor.transform(train=False)(batch)
    blank = dict(zip(model.config.modalities, inputs["modality_mask"][-1].tolist(), strict=True))
    assert blank == {"video": 0, "audio": 0, "text": 1}  # the blank row: no frames, no sound, its transcript
    with torch.no_grad():
        expected = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits.softmax(-1)
    names = model.config.tasks[0]["labels"]
    assert [got[i]["label"] for i in good] == [names[j] for j in expected.argmax(-1).tolist()]
    assert [got[i]["score"] for i in good] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-5)
    again = predict(run, table, out, "--keep_columns", "video", "--chunk_size", "2", "--top_k", "2")
    assert (again["skipped"], again["predicted"], again["errors"]) == (8, 0, 0)  # every row (error rows too) is done
