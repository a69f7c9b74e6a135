"""Whisper on the clip's own window (training, reload and pipeline agree), and pooling that skips padded frames
for every audio encoder family."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import load_recipe
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.data.audio import AudioTransform, load_audio
from mm_hf.demo import write_tones_audiofolder
from mm_hf.models import build_audio_classifier
from mm_hf.models.modeling_audio_classifier import reads_attention_mask

SR = 16000
ID2LABEL = {0: "a", 1: "b", 2: "c"}
recipe = load_recipe("audio_cls")


def _tiny_whisper(folder, seconds=4):
    """A tiny Whisper whose pretrained window is `seconds` long (Whisper's own is 30 s)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                           max_source_positions=50 * seconds, max_target_positions=16, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=seconds, sampling_rate=SR).save_pretrained(folder)
    return folder


def _tiny_wav2vec2_family(folder, kind, norm="layer"):
    """A tiny wav2vec2 / HuBERT / WavLM; "layer" conv norm (large-lv60 style) or "group" (wav2vec2-base style,
    whose extractor returns no attention mask)."""
    import transformers

    config_class, model_class = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
    }[kind]
    config = config_class(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                          conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
                          do_stable_layer_norm=norm == "layer", mask_time_prob=0.0, vocab_size=8)  # fmt: skip
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=SR, return_attention_mask=norm == "layer").save_pretrained(
        folder
    )
    return folder


def _tiny_ast(folder):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       patch_size=8, num_mel_bins=16, max_length=32, frequency_stride=8, time_stride=8)  # fmt: skip
    torch.manual_seed(0)
    ASTModel(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32, sampling_rate=SR).save_pretrained(folder)
    return folder


def clip(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def classifier_and_transform(folder, max_length_seconds=None):
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    torch.manual_seed(0)
    model = build_audio_classifier(
        str(folder), ID2LABEL, head_dropout=0.0, feature_extractor=extractor, max_length_seconds=max_length_seconds
    ).eval()
    return model, AudioTransform(extractor, max_length_seconds=max_length_seconds)


def pooled_and_mask(model, transform, clips):
    """What the head received (the pooled vectors) and the frame mask, for `clips` run as one batch."""
    batch = {key: torch.stack(values) for key, values in transform.features(clips).items()}
    seen = {}
    hook = model.classifier.register_forward_hook(lambda module, args, out: seen.update(pooled=args[0]))
    with torch.no_grad():
        model(**batch)
        hidden = model.backbone(batch[model.main_input_name]).last_hidden_state
    hook.remove()
    mask = model.frame_mask(batch.get("attention_mask"), hidden.shape[1], batch[model.main_input_name])
    return seen["pooled"], mask, hidden, batch


# --- Whisper on the clip's own window ---


@pytest.fixture(scope="module")
def whisper4s(tmp_path_factory):
    return _tiny_whisper(str(tmp_path_factory.mktemp("whisper4s")))


def test_whisper_window_shrinks_to_the_clips(whisper4s):
    full, _ = classifier_and_transform(whisper4s)
    short, transform = classifier_and_transform(whisper4s, max_length_seconds=0.6)
    # 0.6 s rounds up to a 1 s window: 100 mel frames, 50 encoder positions, instead of 4 s / 200.
    assert full.backbone.embed_positions.num_embeddings == 200
    assert short.backbone.embed_positions.num_embeddings == 50
    assert short.config.backbone_config.max_source_positions == 50
    assert short.backbone.config.max_source_positions == 50
    assert (transform.feature_extractor.chunk_length, transform.feature_extractor.n_samples) == (1, SR)
    # The sinusoidal positions of a shorter input are the first rows of the long table, and stay frozen.
    torch.testing.assert_close(short.backbone.embed_positions.weight, full.backbone.embed_positions.weight[:50])
    assert not short.backbone.embed_positions.weight.requires_grad
    features = transform.features([clip(0.3), clip(0.9, seed=1)])
    assert features["input_features"][0].shape == (16, 100)
    # Clips as long as the window, or no length: the pretrained window stays.
    same, transform = classifier_and_transform(whisper4s, max_length_seconds=4.0)
    assert same.backbone.embed_positions.num_embeddings == 200 and transform.feature_extractor.n_samples == 4 * SR


REMOTE = r"""
import json, sys
sys.modules["mm_hf"] = None  # the checkpoint must load from its own shipped code
import numpy as np
from transformers import pipeline
folder, wave = sys.argv[1], np.load(sys.argv[2])
scores = pipeline("audio-classification", model=folder, trust_remote_code=True, device="cpu")(wave, top_k=None)
print(json.dumps({s["label"]: s["score"] for s in scores}))
"""


def test_recipe_trains_saves_and_pipeline_runs_the_short_window(whisper4s, tmp_path):
    data = tmp_path / "tones"
    write_tones_audiofolder(str(data), per_class=(3, 1, 2), seed=0, duration=(0.4, 1.4))
    out = tmp_path / "out"
    args = ["--model_name_or_path", whisper4s, "--output_dir", str(out), "--do_train", "--do_predict",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--learning_rate", "1e-3", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
            "--save_strategy", "no", "--finetune_strategy", "full", "--max_length_seconds", "1",
            "--train_dir", str(data / "train"), "--validation_dir", str(data / "validation"),
            "--test_dir", str(data / "test")]  # fmt: skip
    results = recipe.main(args)
    saved = json.loads((out / "config.json").read_text())
    assert saved["backbone_config"]["max_source_positions"] == 50
    extractor = json.loads((out / "preprocessor_config.json").read_text())
    assert (extractor["chunk_length"], extractor["n_samples"], extractor["return_attention_mask"]) == (1, SR, True)

    # Reloaded in-process: the same window, and the reported test accuracy.
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    transform = AudioTransform(AutoFeatureExtractor.from_pretrained(out), max_length_seconds=1.0)
    paths = sorted(str(p) for p in (data / "test").glob("*/*.wav"))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    batch = transform({"audio": paths, "labels": [names.index(os.path.basename(os.path.dirname(p))) for p in paths]})
    inputs = {k: torch.stack(v) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    assert inputs["input_features"].shape[-1] == 100
    accuracy = (logits.argmax(-1) == torch.tensor(batch["labels"])).float().mean().item()
    assert accuracy == pytest.approx(results["test_accuracy"])

    # A fresh process without mm_hf: pipeline() reads the saved extractor, pads to 1 s and scores the same.
    wave = load_audio(paths[0], SR)
    np.save(tmp_path / "wave.npy", wave)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE, str(out), str(tmp_path / "wave.npy")],
        capture_output=True, text=True, env=env, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = logits[0].softmax(-1)
    for i, name in model.config.id2label.items():
        assert scores[name] == pytest.approx(expected[i].item(), abs=1e-5)


# --- pooling skips padded frames ---


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_padding_with_silence_leaves_the_pooled_vector_unchanged(kind, tmp_path):
    """With layer-normalised conv features the backbone gets the mask and padding cannot reach real frames, so a
    clip padded with silence (in a batch with a longer clip) pools to exactly what it pools to alone."""
    model, transform = classifier_and_transform(_tiny_wav2vec2_family(str(tmp_path / kind), kind))
    assert reads_attention_mask(model.backbone)
    short, longer = clip(0.25), clip(0.5, seed=1)
    alone, _, _, _ = pooled_and_mask(model, transform, [short])
    padded, mask, _, batch = pooled_and_mask(model, transform, [short, longer])
    assert batch["input_values"].shape[1] == len(longer) and mask[0].sum() < mask[1].sum()
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    # Without the mask the padded frames would have been pooled too.
    with torch.no_grad():
        unmasked = model.backbone(batch["input_values"]).last_hidden_state[0].mean(0)
    assert not torch.allclose(unmasked, alone[0], atol=1e-3)


def test_wav2vec2_base_style_gets_no_backbone_mask_but_pools_real_frames_only(tmp_path):
    """wav2vec2-base / HuBERT-base (group-normalised conv features) were trained on zero padding without a mask:
    the backbone does not get one, and its first GroupNorm spans the padding, so padding does change real frames
    (not architecturally invariant). Pooling still skips the padded frames, and each clip's input no longer
    depends on its batch: normalised over its own samples, padded with exact zeros."""
    model, transform = classifier_and_transform(_tiny_wav2vec2_family(str(tmp_path / "base"), "wav2vec2", "group"))
    assert not reads_attention_mask(model.backbone)
    short, longer = clip(0.25), clip(0.5, seed=1)
    alone = transform.features([short])
    batch = transform.features([short, longer])
    torch.testing.assert_close(batch["input_values"][0][: len(short)], alone["input_values"][0])
    assert torch.count_nonzero(batch["input_values"][0][len(short) :]) == 0
    pooled, mask, hidden, _ = pooled_and_mask(model, transform, [short, longer])
    real = int(model.backbone._get_feat_extract_output_lengths(torch.tensor(len(short))))
    assert mask[0].tolist() == [1] * real + [0] * (hidden.shape[1] - real)
    torch.testing.assert_close(pooled[0], hidden[0, :real].mean(0))


@pytest.mark.parametrize("window", [4, 1])
def test_whisper_pools_only_the_frames_of_the_clip(whisper4s, window):
    """Whisper's encoder attends to its padding (it has no attention mask), so padding is not invisible to the real
    frames; pooling at least leaves the padded frames out, in the pretrained window and in the short one."""
    model, transform = classifier_and_transform(whisper4s, max_length_seconds=None if window == 4 else 1.0)
    pooled, mask, hidden, _ = pooled_and_mask(model, transform, [clip(0.3), clip(0.8, seed=1)])
    assert hidden.shape[1] == 50 * window
    real = [15, 40]  # 0.3 s and 0.8 s: 30 and 80 mel frames, halved by the conv stem
    assert mask.sum(1).tolist() == real
    for row, frames in enumerate(real):
        torch.testing.assert_close(pooled[row], hidden[row, :frames].mean(0))


def test_ast_pools_only_the_patches_of_the_clip(tmp_path):
    """AST's extractor pads every clip to its window and returns no mask; the mask is read from the input itself
    (padded frames hold one constant in every mel bin), so training, evaluation and pipeline agree. AST attends to
    its padding, so only the pooled set is tested: the time patches that start inside the clip."""
    model, transform = classifier_and_transform(_tiny_ast(str(tmp_path / "ast")))
    pooled, mask, hidden, batch = pooled_and_mask(model, transform, [clip(0.15), clip(0.5, seed=1)])
    assert "attention_mask" not in batch
    # 0.15 s: (2400 - 400) // 160 + 1 = 13 fbank frames -> time patches starting at 0 and 8 of 0, 8, 16, 24; 2
    # frequency rows; plus [CLS] and distillation. 0.5 s: 48 frames fill the 32-frame window.
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 1, 1, 0, 0], [1] * 10]
    torch.testing.assert_close(pooled[0], hidden[0, mask[0].bool()].mean(0))


def test_fusion_whisper_encoder_runs_the_short_window_and_reloads(whisper4s, tmp_path):
    """The fusion recipes' Whisper audio encoder goes through the same window fitting: model, saved config and
    saved processor agree after a reload (also as remote code, which now ships the audio classifier's file)."""
    from transformers import AutoModelForSequenceClassification

    from mm_hf.models import build_fusion_classifier
    from mm_hf.processing import MultimodalProcessor, ProcessorSettings

    tasks = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}]
    settings = ProcessorSettings(["audio"], max_length_seconds=0.8)
    processor = MultimodalProcessor.from_encoders({"audio": whisper4s}, settings)
    torch.manual_seed(0)
    model = build_fusion_classifier(
        {"audio": whisper4s}, tasks, hidden_size=16,
        audio_feature_extractor=processor.feature_extractor, max_length_seconds=settings.max_length_seconds,
    ).eval()  # fmt: skip
    assert model.multimodal.encoders["audio"].embed_positions.num_embeddings == 50
    out = tmp_path / "fusion"
    model.save_pretrained(out)
    processor.save_pretrained(str(out))
    assert json.loads((out / "config.json").read_text())["audio_config"]["max_source_positions"] == 50
    assert "modeling_audio_classifier.py" in os.listdir(out)
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = MultimodalProcessor.from_pretrained(str(out)).transform(train=False)(
        {"audio": [{"array": clip(0.3), "sampling_rate": SR}, {"array": clip(1.5), "sampling_rate": SR}]}
    )
    inputs = {key: torch.stack(values) for key, values in batch.items()}
    assert inputs["input_features"].shape[-1] == 100 and inputs["audio_attention_mask"].sum(1).tolist() == [30, 80]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_lora_adapter_on_the_short_window_reloads_with_that_window(whisper4s, tmp_path):
    """A LoRA run saves the adapter, not the encoder: the rebuilt base gets the recorded window back, so it
    reads what the saved extractor makes."""
    from types import SimpleNamespace

    from mm_hf.models import load_finetuned
    from mm_hf.outputs import save_adapter_base_config
    from mm_hf.training import apply_strategy

    model, transform = classifier_and_transform(whisper4s, max_length_seconds=1.0)
    args = SimpleNamespace(finetune_strategy="lora", unfreeze_last_n_layers=1, lora_r=4, lora_alpha=8,
                           lora_dropout=0.0, lora_target_modules=None)  # fmt: skip
    model = apply_strategy(model, args).eval()
    with torch.no_grad():  # a trained-looking adapter: non-zero LoRA deltas
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    model.save_pretrained(tmp_path / "adapter")
    save_adapter_base_config(model, str(tmp_path / "adapter"))
    reloaded = load_finetuned(str(tmp_path / "adapter")).eval()
    inputs = {key: torch.stack(values) for key, values in transform.features([clip(0.3), clip(0.9, seed=1)]).items()}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


REAL_WHISPER = os.path.expanduser("~/.cache/mm-hf-dev/realmodels/whisper-base")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(REAL_WHISPER), reason="opt-in: needs the whisper-base checkpoint")
def test_real_whisper_base_on_one_second_clips_is_at_least_10x_faster():
    """whisper-base, 4 one-second clips, forward pass: the 1 s window against the 30 s one (measured with
    forward + backward on 8 clips, one CPU thread: 1.12 s against 77.5 s)."""
    import time

    clips = [clip(1.0, seed=i) for i in range(4)]
    seconds = {}
    for window in (1.0, None):
        extractor = AutoFeatureExtractor.from_pretrained(REAL_WHISPER)
        model = build_audio_classifier(
            REAL_WHISPER, ID2LABEL, feature_extractor=extractor, max_length_seconds=window
        ).eval()  # fmt: skip
        inputs = {
            k: torch.stack(v) for k, v in AudioTransform(extractor, max_length_seconds=1.0).features(clips).items()
        }
        with torch.no_grad():
            model(**inputs)  # warm-up
            start = time.perf_counter()
            model(**inputs)
            seconds[window] = time.perf_counter() - start
    assert seconds[None] >= 10 * seconds[1.0], seconds
