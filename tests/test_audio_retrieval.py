"""recipes/clip_retrieval.py on audio–text pairs with a tiny CLAP: data layouts, strategies, metric names,
outputs, the two-temperature loss, bad clips, and that training improves audio→text retrieval."""

import csv
import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import load_recipe
from transformers import AutoModel, AutoProcessor, ClapModel, ClapProcessor, default_data_collator, pipeline

from mm_hf.data.audio import BadSampleError
from mm_hf.demo import write_tones_audiofolder
from mm_hf.metrics import load_metric
from mm_hf.models import ContrastiveDualEncoderModel

recipe = load_recipe("clip_retrieval")
CAPTIONS = {"low": ["a low tone", "a deep hum"], "mid": ["a mid tone", "a medium beep"],
            "high": ["a high beep", "a shrill whistle"], "noise": ["static noise", "a hiss"]}  # fmt: skip
SEQ_LEN = 20


def write_captions(root, captions: dict) -> None:
    """{split}.jsonl under `root`: {"audio": path relative to the file, "caption": list of captions} per clip."""
    for split in ("train", "validation", "test"):
        rows = [{"audio": f"{split}/{label}/{file}", "caption": captions[label]}
                for label in sorted(captions) for file in sorted(os.listdir(root / split / label))]  # fmt: skip
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation, and on a busy machine OpenMP's waiting
    threads made the 200-step training test ~10x slower (150 s instead of 12 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """Tone clips in class folders low/mid/high/noise (12 train / 3 validation / 4 test per class, 0.5-1.5 s)
    with captions in train.jsonl, validation.jsonl, test.jsonl (paths relative to the files)."""
    root = tmp_path_factory.mktemp("tones")
    write_tones_audiofolder(str(root), per_class=(12, 3, 4))
    write_captions(root, CAPTIONS)
    return root


def run(clap, out, data, *extra, steps=3, splits=("train", "validation", "test")):
    args = ["--model_name_or_path", str(clap), "--output_dir", str(out), "--do_train", "--max_steps", str(steps),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "12", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
            "--save_strategy", "no", "--max_seq_length", str(SEQ_LEN), "--train_val_split", "0"]  # fmt: skip
    for split in splits:
        args += [f"--{split}_file", str(data / f"{split}.jsonl")]
    return recipe.main(args + list(extra))


def recompute_recall_at_1(folder, data) -> float:
    """audio→text R@1 of a saved checkpoint with plain transformers (ClapModel + ClapProcessor), the first 1 s."""
    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    waves = [sf.read(data / row["audio"], dtype="float32")[0][:16000] for row in rows]
    texts = [c for row in rows for c in row["caption"]]
    owners = [i for i, row in enumerate(rows) for _ in row["caption"]]
    with torch.no_grad():
        audio = model.get_audio_features(**processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt"))
        tokens = processor.tokenizer(texts, padding="max_length", max_length=SEQ_LEN, return_tensors="pt")
        text = model.get_text_features(**tokens)
    scores = load_metric("retrieval").compute(
        predictions=text.pooler_output.numpy(),
        references=owners,
        image_embeds=audio.pooler_output.numpy(),
        modality="audio",
    )
    return scores["audio_to_text_recall@1"]


@pytest.mark.parametrize(
    ("strategy", "changes", "frozen"),
    [("full", ("audio_model", "text_model", "logit_scale_a", "logit_scale_t"), ()),
     ("lock_text", ("audio_model", "audio_projection", "logit_scale_a", "logit_scale_t"), ("text_model", "text_projection")),
     ("lock_image", ("text_model", "text_projection", "logit_scale_a", "logit_scale_t"), ("audio_model", "audio_projection")),
     ("lora", ("audio_model", "text_model"), ("audio_projection", "text_projection", "logit_scale_a", "logit_scale_t"))],
)  # fmt: skip
def test_strategies_train_the_right_towers_and_save_a_plain_clap(
    tiny_clap, tones, tmp_path, capsys, strategy, changes, frozen
):
    out = tmp_path / strategy
    results = run(tiny_clap, out, tones, "--modality", "audio", "--do_eval", "--finetune_strategy", strategy,
                  "--zeroshot_eval_dir", str(tones / "test"), "--prompt_templates", "a {} sound")  # fmt: skip
    for key in ("zeroshot_test_audio_to_text_recall@1", "test_audio_to_text_recall@1", "test_text_to_audio_recall@5",
                "test_text_to_audio_median_rank", "zeroshot_test_zeroshot_cls_accuracy", "test_zeroshot_cls_accuracy",
                "eval_loss", "train_loss"):  # fmt: skip
        assert key in results, key
    assert not [k for k in results if "image" in k]
    assert results["test_num_items"] == 16 and results["test_num_texts"] == 32
    assert "Retrieval on the test split (16 clips)" in capsys.readouterr().out

    # A plain ClapModel + ClapProcessor: what zero-shot audio pipelines and audio_cls.py load with AutoModel.
    trained, base = AutoModel.from_pretrained(out), ClapModel.from_pretrained(tiny_clap)
    assert type(trained) is ClapModel and isinstance(AutoProcessor.from_pretrained(out), ClapProcessor)
    base_params = dict(base.named_parameters())
    for prefix in changes:
        moved = [
            n for n, p in trained.named_parameters() if n.startswith(prefix) and not torch.equal(p, base_params[n])
        ]
        assert moved, f"{strategy}: nothing in {prefix} changed"
    # Frozen towers keep their weights and their buffers: the HTSAT's BatchNorm stays in eval mode in training.
    base_state = base.state_dict()
    assert "audio_model.audio_encoder.batch_norm.running_mean" in base_state
    for prefix in frozen:
        assert all(torch.equal(t, base_state[n]) for n, t in trained.state_dict().items() if n.startswith(prefix)), (
            prefix
        )
    assert recompute_recall_at_1(out, tones) == results["test_audio_to_text_recall@1"]

    waveform = sf.read(tones / "test" / "low" / "0000.wav", dtype="float32")[0]
    scores = pipeline("zero-shot-audio-classification", model=str(out))(
        waveform, candidate_labels=["a low tone", "a hiss"]
    )
    assert {s["label"] for s in scores} == {"a low tone", "a hiss"}

    card = (out / "README.md").read_text()
    assert "pipeline_tag: zero-shot-audio-classification" in card and "audio-text retrieval" in card
    table = (out / "before_after.md").read_text()
    assert "test_audio_to_text_recall@1" in table and "test_text_to_audio_median_rank" in table
    assert "test_zeroshot_cls_accuracy" in table


def test_loss_is_claps_two_temperature_loss_and_both_temperatures_learn(tiny_clap, tones):
    clap = ClapModel.from_pretrained(tiny_clap).eval()
    processor = AutoProcessor.from_pretrained(tiny_clap)
    with torch.no_grad():  # distinct temperatures, so using one for the other shows
        clap.logit_scale_a.fill_(math.log(20.0))
        clap.logit_scale_t.fill_(math.log(5.0))
    files = [tones / "train" / label / "0000.wav" for label in sorted(CAPTIONS)]
    waves = [sf.read(f, dtype="float32")[0][:16000] for f in files]
    inputs = dict(processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt"))
    inputs.update(
        processor.tokenizer([CAPTIONS[label][0] for label in sorted(CAPTIONS)], padding=True, return_tensors="pt")
    )
    model = ContrastiveDualEncoderModel.from_backbone(clap)
    assert model.main_input_name == "input_features"
    out = model(**inputs)
    with torch.no_grad():
        reference = clap(**inputs, return_loss=True)
    labels = torch.arange(len(files))
    # logits_per_audio = exp(logit_scale_a) * A Tᵀ, logits_per_text = exp(logit_scale_t) * T Aᵀ, one CE over each.
    expected = (
        F.cross_entropy(reference.logits_per_audio, labels) + F.cross_entropy(reference.logits_per_text, labels)
    ) / 2
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(F.normalize(out.audio_embeds, dim=-1), reference.audio_embeds)
    # ClapModel's own `loss` (transformers 5.23) cross-entropies `logits_per_audio.t()`, i.e. ranks audios for each
    # text in both terms, so it never trains audio→text ranking; ours is its symmetric form over the same logits.
    text_to_audio_twice = (F.cross_entropy(reference.logits_per_text, labels)
                           + F.cross_entropy(reference.logits_per_audio.t(), labels)) / 2  # fmt: skip
    torch.testing.assert_close(reference.loss, text_to_audio_twice)
    out.loss.backward()  # both temperatures get a gradient: no unused parameters under DDP
    assert clap.logit_scale_a.grad.abs() > 0 and clap.logit_scale_t.grad.abs() > 0
    with pytest.raises(ValueError, match="one per direction"):
        ContrastiveDualEncoderModel.from_backbone(clap, loss="siglip")


def test_contrastive_wrapper_round_trips_with_clap(tiny_clap, tmp_path):
    import mm_hf.models  # noqa: F401  (registers the wrapper with AutoModel)

    model = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_clap)).eval()
    model.save_pretrained(tmp_path / "wrapper")
    reloaded = AutoModel.from_pretrained(tmp_path / "wrapper").eval()
    assert type(reloaded.backbone) is ClapModel and reloaded.main_input_name == "input_features"
    features, ids = torch.randn(3, 1, 101, 32), torch.randint(5, 40, (3, 7))
    with torch.no_grad():
        a, b = model(input_features=features, input_ids=ids), reloaded(input_features=features, input_ids=ids)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.audio_embeds, b.audio_embeds)
    assert a.image_embeds is None


def test_lora_targets_attention_in_every_htsat_stage_and_text_layer(tiny_clap):
    from mm_hf.training import apply_strategy

    model = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_clap))
    args = SimpleNamespace(finetune_strategy="lora", lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_target_modules=None)
    model = apply_strategy(model, args)
    adapted = {n.split(".lora_")[0].split("backbone.")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {f"audio_model.audio_encoder.layers.{i}.blocks.0.attention.self.{m}" for i in (0, 1)
                       for m in ("query", "key", "value")} | {f"text_model.encoder.layer.{i}.attention.self.{m}"
                                                              for i in (0, 1) for m in ("query", "key", "value")}  # fmt: skip


def test_fused_clap_gets_is_longer(tiny_clap, tones):
    """Fused CLAP checkpoints (4-channel mel input) need `is_longer`, which AudioTransform does not pass on: the
    pair transform adds it (False: clips are cut to the model's window)."""
    from transformers import ClapFeatureExtractor

    from mm_hf.retrieval import PairTransform, build_media

    clap = ClapModel.from_pretrained(tiny_clap)
    clap.config.audio_config.enable_fusion = True
    tokenizer = AutoProcessor.from_pretrained(tiny_clap).tokenizer
    extractor = ClapFeatureExtractor(feature_size=32, sampling_rate=16000, hop_length=160, max_length_s=1,
                                     fft_window_size=400, frequency_max=8000, truncation="fusion")  # fmt: skip
    media = build_media("audio", ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer), "audio")
    files = [str(tones / "train" / label / "0000.wav") for label in sorted(CAPTIONS)]
    batch = PairTransform(media, tokenizer, train=True, max_length=SEQ_LEN)(
        {"audio": files, "captions": [["a hum"]] * 4}
    )
    batch = default_data_collator([{k: v[i] for k, v in batch.items()} for i in range(len(files))])
    assert batch["input_features"].shape[:2] == (4, 4) and not batch["is_longer"].any()
    assert torch.isfinite(ContrastiveDualEncoderModel.from_backbone(ClapModel(clap.config))(**batch).loss)


def test_audio_folders_with_metadata_and_bad_clips_named_or_skipped(tiny_clap, tones, tmp_path):
    """--train_dir reads metadata.jsonl (file_name + caption); a corrupt clip is named, or dropped with
    --skip_bad_samples."""
    data = tmp_path / "tones"
    shutil.copytree(tones, data)
    for split in ("train", "validation", "test"):
        rows = [{"file_name": f"{label}/{file}", "caption": CAPTIONS[label]}
                for label in sorted(CAPTIONS) for file in sorted(os.listdir(data / split / label))]  # fmt: skip
        (data / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = data / "train" / "mid" / "0003.wav"
    bad.write_bytes(bad.read_bytes()[:60])  # header only: truncated
    folders = [f"--{split}_dir={data / split}" for split in ("train", "validation", "test")]
    common = ["--model_name_or_path", str(tiny_clap), "--do_train", "--max_steps", "2", "--per_device_train_batch_size",
              "8", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
              "--max_seq_length", str(SEQ_LEN), "--finetune_strategy", "lock_text", *folders]  # fmt: skip
    with pytest.raises(BadSampleError, match=r"mid/0003\.wav"):
        recipe.main([*common, "--output_dir", str(tmp_path / "out")])
    results = recipe.main([*common, "--output_dir", str(tmp_path / "out2"), "--skip_bad_samples", "true"])
    assert results["train_samples"] == 4 * 12 - 1 and results["test_num_items"] == 16


def test_csv_captions_with_relative_audio_paths(tiny_clap, tones, tmp_path):
    from mm_hf.args import DataArguments
    from mm_hf.data.pairs import load_caption_splits
    from mm_hf.retrieval import build_media

    path = tones / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip", "text"])
        writer.writerows([[f"train/{label}/0000.wav", CAPTIONS[label][0]] for label in sorted(CAPTIONS)])
    splits = load_caption_splits(DataArguments(train_file=str(path), train_val_split=0), "clip", "text")
    media = build_media("audio", AutoProcessor.from_pretrained(tiny_clap), "clip")
    train, bad = media.check(splits["train"], skip_bad=False)
    assert bad == [] and train["captions"][0] == ["a high beep"] and os.path.isabs(train["clip"][0])


def test_modality_must_match_the_model(tiny_clap, tones, tmp_path):
    with pytest.raises(ValueError, match="--modality image: the model .* audio–text"):
        run(tiny_clap, tmp_path / "out", tones, "--modality", "image")


def test_training_improves_audio_to_text_recall(tiny_clap, tones, tmp_path):
    """The random tiny CLAP learns which captions go with which kind of sound: audio→text R@1 from 0.25 to 0.94
    in 300 steps (0.69-0.94 over --seed 1-4, 42). No validation split: it would be evaluated every 3 steps."""
    results = run(tiny_clap, tmp_path / "out", tones, "--finetune_strategy", "full", "--learning_rate", "2e-3",
                  "--per_device_train_batch_size", "16", "--warmup_steps", "0.1", "--logging_steps", "50",
                  steps=300, splits=("train", "test"))  # fmt: skip
    before, after = results["zeroshot_test_audio_to_text_recall@1"], results["test_audio_to_text_recall@1"]
    assert after >= before + 0.4, (before, after)
