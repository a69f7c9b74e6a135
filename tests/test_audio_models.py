"""The audio classifier on tiny wav2vec2 / Whisper / AST backbones: round trips, remote code, pooling, strategies."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForAudioClassification

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.models import AudioClassifierForAudioClassification, build_audio_classifier
from mm_hf.models.pooling import AttentionPooling, MeanPooling
from mm_hf.training import apply_strategy

ID2LABEL = {0: "dog", 1: "rooster", 2: "rain"}
SR = 16000


def _tiny_wav2vec2(folder):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    # "layer" conv norm + stable layer norm (wav2vec2-large-lv60 style): padding cannot leak into real frames.
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                            do_stable_layer_norm=True, mask_time_prob=0.0, vocab_size=8)  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, return_attention_mask=True).save_pretrained(folder)


def _tiny_whisper(folder):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    # chunk_length=1 s -> 100 mel frames = 2 * max_source_positions, the fixed length Whisper's encoder expects.
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                           max_source_positions=50, max_target_positions=16, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1, sampling_rate=SR).save_pretrained(folder)


def _tiny_ast(folder):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       patch_size=8, num_mel_bins=16, max_length=32, frequency_stride=8, time_stride=8)  # fmt: skip
    ASTModel(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32, sampling_rate=SR).save_pretrained(folder)


BACKBONES = {"wav2vec2": _tiny_wav2vec2, "whisper": _tiny_whisper, "ast": _tiny_ast}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_backbones")
    folders = {}
    for name, make in BACKBONES.items():
        torch.manual_seed(0)
        make(str(root / name))
        folders[name] = root / name
    return folders


def waveform(seconds=0.5, seed=0):
    return np.random.default_rng(seed).standard_normal(int(SR * seconds)).astype(np.float32) * 0.1


def features(folder, audio):
    from transformers import AutoFeatureExtractor

    return dict(AutoFeatureExtractor.from_pretrained(folder)(audio, sampling_rate=SR, return_tensors="pt"))


def classifier(folder, pooling="mean"):
    torch.manual_seed(0)
    model = build_audio_classifier(str(folder), ID2LABEL, pooling=pooling, head_dropout=0.0)
    if pooling == "attention":  # zero-initialised scores are a plain mean: make the test see a real weighting
        torch.nn.init.normal_(model.pooler.score.weight, std=1.0)
    return model.eval()


@pytest.fixture(scope="module")
def saved(backbones, tmp_path_factory):
    """Each backbone's classifier (attention pooling) saved with its feature extractor, plus reference logits."""
    root = tmp_path_factory.mktemp("audio_classifiers")
    out = {}
    for name, folder in backbones.items():
        model = classifier(folder, pooling="attention")
        inputs = features(folder, waveform())
        with torch.no_grad():
            logits = model(**inputs).logits
        target = root / name
        model.save_pretrained(target)
        features_dir = folder
        from transformers import AutoFeatureExtractor

        AutoFeatureExtractor.from_pretrained(features_dir).save_pretrained(target)
        torch.save(inputs, target / "inputs.pt")
        out[name] = (target, logits)
    return out


def test_main_input_name_follows_the_backbone(backbones):
    names = {name: classifier(folder).main_input_name for name, folder in backbones.items()}
    assert names == {"wav2vec2": "input_values", "whisper": "input_features", "ast": "input_values"}
    assert type(classifier(backbones["whisper"]).backbone).__name__ == "WhisperEncoder"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_save_and_auto_reload_give_identical_logits(saved, name):
    folder, logits = saved[name]
    assert {"configuration_audio_classifier.py", "modeling_audio_classifier.py"} <= set(os.listdir(folder))
    for code in ("configuration_audio_classifier.py", "modeling_audio_classifier.py"):
        assert "import mm_hf" not in (folder / code).read_text() and "from mm_hf" not in (folder / code).read_text()
    reloaded = AutoModelForAudioClassification.from_pretrained(folder).eval()
    assert isinstance(reloaded, AudioClassifierForAudioClassification)
    assert reloaded.config.id2label == ID2LABEL and reloaded.config.pooling == "attention"
    with torch.no_grad():
        # Same weights, same inputs; a second model instance may get other CPU kernels (last-bit differences seen on
        # AMD EPYC for AST), so equal up to float rounding: a wrong or missing weight moves logits by far more.
        torch.testing.assert_close(reloaded(**torch.load(folder / "inputs.pt")).logits, logits, rtol=1e-5, atol=1e-6)
    # Loss is a per-batch cross-entropy mean.
    out = reloaded(**torch.load(folder / "inputs.pt"), labels=torch.tensor([1]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


REMOTE = r"""
import json, sys
sys.modules["mm_hf"] = None  # the checkpoint must load from its own shipped code
import numpy as np, torch
from transformers import AutoModelForAudioClassification, pipeline
results = {}
for folder in sys.argv[1:]:
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**torch.load(folder + "/inputs.pt")).logits
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    top = pipeline("audio-classification", model=folder, trust_remote_code=True, device="cpu")(wave, top_k=1)[0]
    results[folder] = {"logits": logits.tolist(), "module": type(model).__module__, "top": top["label"]}
print(json.dumps(results))
"""


def test_trust_remote_code_and_pipeline_without_mm_hf(saved):
    folders = [str(folder) for folder, _ in saved.values()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", REMOTE, *folders], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder, logits in saved.values():
        result = results[str(folder)]
        assert "mm_hf" not in result["module"] and result["module"].startswith("transformers_modules")
        torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=1e-5, atol=1e-6)  # float rounding
        # waveform() is what the pipeline received (same seed and length): its top label is the in-process argmax.
        assert result["top"] == ID2LABEL[int(logits.argmax())]


def test_masked_mean_pooling_ignores_padding(backbones):
    model = classifier(backbones["wav2vec2"])
    clip = torch.from_numpy(waveform(0.25))
    padded = torch.cat([clip, torch.zeros(3000)])
    batch = torch.stack([padded, padded])
    batch[1, : len(clip) + 1000] = torch.from_numpy(waveform(0.25 + 1000 / SR, seed=1))
    mask = torch.zeros_like(batch, dtype=torch.long)
    mask[0, : len(clip)] = 1
    mask[1, : len(clip) + 1000] = 1

    def pooled(values, attention_mask):
        hidden = model.backbone(values, attention_mask=attention_mask).last_hidden_state
        return model.pooler(hidden, model.frame_mask(attention_mask, hidden.shape[1]))

    with torch.no_grad():
        alone = pooled(clip[None], torch.ones(1, len(clip), dtype=torch.long))
        in_batch = pooled(batch, mask)
        unmasked = model.pooler(model.backbone(batch).last_hidden_state)
    torch.testing.assert_close(in_batch[0], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-3)


def test_pooling_modules_shapes_and_attention_weights():
    hidden = torch.randn(2, 7, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    pool = AttentionPooling(32)
    torch.nn.init.normal_(pool.score.weight)
    weights = pool.attention_weights(hidden, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert torch.all(weights[0, 3:] == 0) and torch.all(weights[0, :3] > 0)
    assert pool(hidden, mask).shape == (2, 32)
    torch.testing.assert_close(pool(hidden, mask)[0], pool(hidden[:1, :3])[0])
    torch.testing.assert_close(MeanPooling()(hidden, mask)[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(MeanPooling()(hidden), hidden.mean(1))


def strategy_args(strategy, **overrides):
    values = dict(finetune_strategy=strategy, unfreeze_last_n_layers=1, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                  lora_target_modules=None)  # fmt: skip
    return SimpleNamespace(**{**values, **overrides})


def train_three_steps(model, inputs):
    """3 AdamW steps; returns (trainable names, names whose values changed)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    labels = torch.tensor([0, 2])
    for _ in range(3):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return trainable, changed


CASES = [
    ("wav2vec2", "linear_probe", {}),
    ("wav2vec2", "top_k", {}),
    ("wav2vec2", "full", {}),
    ("wav2vec2", "full", {"freeze_feature_encoder": True}),
    ("wav2vec2", "lora", {}),
    ("whisper", "top_k", {}),
    ("whisper", "lora", {}),
    ("ast", "top_k", {}),
    ("ast", "lora", {}),
]


@pytest.mark.parametrize(("name", "strategy", "overrides"), CASES)
def test_strategies_train_exactly_the_trainable_parameters(backbones, name, strategy, overrides):
    folder = backbones[name]
    model = apply_strategy(classifier(folder, pooling="attention"), strategy_args(strategy), **overrides)
    inputs = features(folder, [waveform(0.5), waveform(0.5, seed=1)])
    trainable, changed = train_three_steps(model, inputs)
    assert trainable
    # masked_spec_embed only runs under SpecAugment (off in the tiny config).
    assert changed == {n for n in trainable if "masked_spec_embed" not in n}
    names = [n.removeprefix("base_model.model.") for n in trainable]
    layers = {"wav2vec2": "backbone.encoder.layers.", "whisper": "backbone.layers.", "ast": "backbone.layers."}
    layers = layers[name]
    head = [n for n in names if n.startswith(("pooler.", "classifier."))]
    assert head
    if strategy == "linear_probe":
        assert sorted(names) == sorted(head)
    elif strategy == "top_k":
        assert any(n.startswith(layers + "1.") for n in names)
        assert not any(n.startswith(layers + "0.") for n in names)
        stems = ("backbone.feature_extractor", "backbone.conv1", "backbone.embeddings", "backbone.embed_positions")
        assert not any(n.startswith(stems) for n in names)
        final_norm = {"wav2vec2": "backbone.encoder.layer_norm.", "whisper": "backbone.layer_norm.",
                      "ast": "backbone.layernorm."}[name]  # fmt: skip
        assert any(n.startswith(final_norm) for n in names)
    elif strategy == "full":
        frozen_stem = overrides.get("freeze_feature_encoder", False)
        assert any(n.startswith("backbone.feature_extractor.") for n in names) is not frozen_stem
        assert all(
            n in trainable for n, _ in model.named_parameters() if not n.startswith("backbone.feature_extractor")
        )
        assert any(n.startswith("backbone.encoder.layers.0.") for n in names)
    else:
        assert model.peft_config["default"].modules_to_save == ["pooler", "classifier"]
        lora = [n for n in names if "lora_" in n]
        assert lora and all(n.startswith(layers) for n in lora)
        assert all("lora_" in n or "modules_to_save" in n for n in names)
        assert all(n.startswith(("pooler.", "classifier.")) for n in names if "modules_to_save" in n)


def test_whisper_keeps_its_sinusoidal_positions_frozen(backbones):
    model = apply_strategy(classifier(backbones["whisper"]), strategy_args("full"))
    assert not model.backbone.embed_positions.weight.requires_grad
    assert model.backbone.layers[0].self_attn.q_proj.weight.requires_grad


def test_lora_with_parameterless_mean_pooling_saves_the_head(backbones, tmp_path):
    folder = backbones["wav2vec2"]
    model = apply_strategy(classifier(folder), strategy_args("lora"))
    inputs = features(folder, [waveform(0.5), waveform(0.5, seed=1)])
    trainable, changed = train_three_steps(model, inputs)
    assert changed == trainable
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("classifier" in k for k in saved) and any("lora_" in k for k in saved)


def test_bad_pooling_is_refused():
    from transformers import Wav2Vec2Config

    from mm_hf.models import AudioClassifierConfig

    with pytest.raises(ValueError, match="pooling"):
        AudioClassifierConfig(backbone_config=Wav2Vec2Config().to_dict(), pooling="max")
