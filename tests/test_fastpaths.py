"""mm_hf.fastpaths: the GPU defaults (decided on a faked device: no GPU here), SDPA on every tower with eager
outputs matched, the counted FLOPs against a hand count, and the MFU in all_results.json."""

import json
import logging
import os

import pytest
import torch
import transformers
import yaml
from conftest import load_recipe
from torch import nn
from transformers import Trainer, TrainingArguments, WavLMConfig, WavLMModel

from mm_hf import fastpaths
from mm_hf.fastpaths import Gpu, StepFlops, gpu_defaults, mfu_metrics, peak_flops, tower_attention, use_attention
from mm_hf.models.audio_classifier import build_audio_classifier
from mm_hf.models.clip_classifier import build_dual_encoder_classifier
from mm_hf.models.fusion import Task, build_fusion_classifier
from mm_hf.models.tiny import build_tiny_encoders

H200 = Gpu("NVIDIA H200", (9, 0), bf16=True)
T4 = Gpu("Tesla T4", (7, 5), bf16=False)


def test_gpu_defaults_fill_only_what_the_user_left_unset():
    assert gpu_defaults(H200, set()) == {"bf16": True, "optim": "adamw_torch_fused", "tf32": True}
    # Any precision flag of the user's, whatever its value, keeps bf16 off the table; so does --optim, --tf32.
    assert gpu_defaults(H200, {"bf16"}) == {"optim": "adamw_torch_fused", "tf32": True}
    assert gpu_defaults(H200, {"fp16", "optim", "tf32"}) == {}
    # T4 (Turing) only emulates bf16 and has no TF32; no GPU or --use_cpu: nothing.
    assert gpu_defaults(T4, set()) == {"optim": "adamw_torch_fused"}
    assert gpu_defaults(None, set()) == {} and gpu_defaults(H200, set(), use_cpu=True) == {}


def test_peak_table_matches_device_names():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == pytest.approx(156e12)
    assert peak_flops("NVIDIA A10", "bf16") == pytest.approx(125e12)  # not A100's
    assert peak_flops("NVIDIA L4", "fp32") == pytest.approx(30.3e12)
    assert peak_flops("NVIDIA L40S", "bf16") is None  # not L4's: unknown
    assert peak_flops("Tesla T4", "bf16") is None and peak_flops("Tesla T4", "fp32") == pytest.approx(8.1e12)
    out = mfu_metrics(1e9, 1000.0, "NVIDIA H200", "bf16", num_devices=2)
    assert out["train_mfu"] == pytest.approx(1e12 / (2 * 989.4e12))
    assert mfu_metrics(1e9, 1000.0, "Some GPU", "bf16") == {"train_flops_per_sample": 1e9}


class FrozenThenTrainable(nn.Module):
    """Linear(8, 16) frozen -> ReLU -> Linear(16, 4) trained, loss in forward (as the recipes' models)."""

    def __init__(self):
        super().__init__()
        self.frozen, self.head = nn.Linear(8, 16), nn.Linear(16, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x, labels):
        logits = self.head(torch.relu(self.frozen(x)))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return {"x": torch.randn(8), "labels": torch.tensor(i % 4)}


def test_step_flops_equal_a_hand_count_with_frozen_layers_forward_only(tmp_path):
    """One optimizer step of 2 micro-batches of 3 through a Trainer. Per sample, a Linear(i, o) costs 2*i*o FLOPs
    forward; the trained head 2*i*o more for its weight gradient, and nothing for its input gradient (nothing
    below it trains); the frozen layer gets no backward at all."""
    model = FrozenThenTrainable()
    counter = StepFlops(model)
    args = TrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=3, gradient_accumulation_steps=2, use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[counter])
    metrics = trainer.train().metrics
    hand = 2 * 8 * 16 + 2 * 16 * 4 + 2 * 16 * 4
    assert counter.samples == 6 and counter.flops == 6 * hand and counter.flops_per_sample == hand
    args.bf16 = True
    out = fastpaths.train_throughput(counter, metrics, args, "NVIDIA H200")
    assert out["train_mfu"] == pytest.approx(hand * metrics["train_samples_per_second"] / 989.4e12)


def test_every_tower_reports_sdpa_and_eager_is_honoured(tiny_vtde, tiny_wav2vec2, tmp_path, caplog):
    # A tower loaded eager is moved to sdpa (its class has it); --attn_implementation eager moves every one back.
    model = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random", attn_implementation="eager")
    assert tower_attention(model) == {"media": "eager"}
    assert use_attention(model) == {"media": "sdpa"}
    assert use_attention(model, "eager") == {"media": "eager"}
    assert use_attention(build_audio_classifier(tiny_wav2vec2, {0: "a", 1: "b"})) == {"media": "sdpa"}
    # WavLM has no SDPA path in transformers 5.23: it stays eager, and the log says so.
    wavlm = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)  # fmt: skip
    WavLMModel(wavlm).save_pretrained(tmp_path / "wavlm")
    with caplog.at_level(logging.INFO, logger="mm_hf.fastpaths"):
        assert use_attention(build_audio_classifier(str(tmp_path / "wavlm"), {0: "a", 1: "b"})) == {"media": "eager"}
    assert "no sdpa implementation" in caplog.text and "WavLMModel: eager" in caplog.text


def _fusion_model(tmp_path):
    encoders = build_tiny_encoders(str(tmp_path / "enc"))
    return build_fusion_classifier(
        {"image": encoders["vision"], "text": encoders["text"]},
        [Task("label", "single_label_classification", ["x", "y", "z"])],
        fusion="cross_attention",
        text_pooling="attention",
    )


def test_sdpa_equals_eager_for_the_classifier_and_fusion_models(tiny_vtde, tmp_path):
    classifier = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random").eval()
    pixels = {"pixel_values": torch.randn(3, 3, 32, 32)}
    fusion = _fusion_model(tmp_path).eval()
    text = {
        "input_ids": torch.randint(5, 20, (3, 7)),
        "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3] * 2)[:3],
    }
    inputs = {"classifier": (classifier, pixels), "fusion": (fusion, {**pixels, **text})}
    for name, (model, batch) in inputs.items():
        assert set(use_attention(model).values()) == {"sdpa"}, name
        with torch.no_grad():
            sdpa = model(**batch).logits
            use_attention(model, "eager")
            eager = model(**batch).logits
        torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5, msg=name)


clip_imagecls = load_recipe("clip_imagecls")


def test_faked_gpu_run_records_defaults_attention_flops_and_mfu(tiny_vtde, digits_dir, tmp_path, monkeypatch, caplog):
    """The run as it goes on an H200, on CPU: the defaults the user left unset are taken (bf16, fused AdamW),
    --tf32 false is honoured, and all_results.json holds the towers' attention, FLOPs per sample and the MFU."""
    monkeypatch.setattr(fastpaths, "detect_gpu", lambda: H200)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)  # bf16 on "the GPU"
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="mm_hf.fastpaths"):
        clip_imagecls.main([
            "--model_name_or_path", tiny_vtde, "--output_dir", str(out), "--train_dir", str(digits_dir / "train"),
            "--test_dir", str(digits_dir / "test"), "--do_train", "--do_predict", "--max_steps", "2",
            "--finetune_strategy", "full", "--head_init", "random", "--per_device_train_batch_size", "8",
            "--tf32", "false", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
        ])  # fmt: skip
    assert "GPU fast paths on NVIDIA H200 (capability 9.0): --bf16 True, --optim adamw_torch_fused" in caplog.text
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert (config["bf16"], config["optim"], config["tf32"], config["attn_implementation"]) == (
        True, "adamw_torch_fused", False, "sdpa",
    )  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert results["attn_implementation"] == {"media": "sdpa"}
    assert results["train_flops_per_sample"] > 0
    expected = results["train_flops_per_sample"] * results["train_samples_per_second"] / 989.4e12
    assert 0 < results["train_mfu"] < 1 and results["train_mfu"] == pytest.approx(expected)
    assert os.path.exists(out / "model.safetensors")
