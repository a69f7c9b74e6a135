"""mm_hf.fastpaths: the GPU defaults (decided on a faked device: no GPU here), SDPA on every tower with eager
outputs matched, the counted FLOPs against a hand count, and the MFU in all_results.json."""

import copy
import json
import logging
import os

import pytest
import torch
import transformers
import yaml
from conftest import load_recipe
from torch import nn
from transformers import AutoModel, Trainer, TrainingArguments, WavLMConfig, WavLMModel

from mm_hf import fastpaths
from mm_hf.cards import _card_hyperparameters
from mm_hf.fastpaths import Gpu, StepFlops, gpu_defaults, mfu_metrics, peak_flops, tower_attention, use_attention
from mm_hf.models.audio_classifier import build_audio_classifier
from mm_hf.models.clip_classifier import build_dual_encoder_classifier
from mm_hf.models.fusion import Task, build_fusion_classifier
from mm_hf.models.modeling_dual_encoder import ContrastiveDualEncoderModel
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


def test_step_flops_equal_a_hand_count_with_frozen_layers_forward_only():
    """One optimizer step of 2 micro-batches of 3, as Trainer drives the callback. Per sample, a Linear(i, o) costs
    2*i*o FLOPs forward; the trained head 2*i*o more for its weight gradient and nothing for its input gradient
    (nothing below it trains); the frozen layer gets no backward at all."""
    model, counter = FrozenThenTrainable(), StepFlops()
    counter.on_step_begin(None, None, None, model=model)
    for _ in range(2):
        model(torch.randn(3, 8), torch.tensor([0, 1, 2]))["loss"].backward()
    counter.on_step_end(None, None, None)
    model(torch.randn(5, 8), torch.zeros(5, dtype=torch.long))["loss"].backward()  # later steps are not counted
    hand = 2 * 8 * 16 + 2 * 16 * 4 + 2 * 16 * 4
    assert counter.samples == 6 and counter.flops == 6 * hand and counter.flops_per_sample == hand
    args = TrainingArguments("unused", bf16=True, use_cpu=True)
    out = fastpaths.train_throughput(counter, {"train_samples_per_second": 1000.0}, args, "NVIDIA H200")
    assert out["train_flops_per_sample"] == hand and out["train_mfu"] == pytest.approx(hand * 1000 / 989.4e12)


def test_every_tower_reports_sdpa_and_eager_is_honoured(tiny_vtde, tiny_clip, tiny_wav2vec2, tmp_path, caplog):
    # A tower loaded eager is moved to sdpa (its class has it); --attn_implementation eager moves every one back.
    model = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random", attn_implementation="eager")
    assert tower_attention(model) == {"media": "eager"}
    assert use_attention(model) == {"media": "sdpa"}
    assert use_attention(model, "eager") == {"media": "eager"}
    # The other recipes' models: CLIP classifier, wav2vec2 classifier, retrieval's dual encoder (both towers).
    assert use_attention(build_dual_encoder_classifier(tiny_clip, {0: "a"}, head_init="random")) == {"media": "sdpa"}
    assert use_attention(build_audio_classifier(tiny_wav2vec2, {0: "a", 1: "b"})) == {"media": "sdpa"}
    dual = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_vtde))
    assert set(use_attention(dual).values()) == {"sdpa"} and len(dual.parts().towers) == 2
    # WavLM has no SDPA path in transformers 5.23: it stays eager, and the log says so.
    wavlm = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
                        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)  # fmt: skip
    WavLMModel(wavlm).save_pretrained(tmp_path / "wavlm")
    with caplog.at_level(logging.INFO, logger="mm_hf.fastpaths"):
        assert use_attention(build_audio_classifier(str(tmp_path / "wavlm"), {0: "a", 1: "b"})) == {"media": "eager"}
    assert "no sdpa implementation" in caplog.text and "WavLMModel: eager" in caplog.text


@pytest.fixture(scope="module")
def fusion_model(tmp_path_factory):
    """A tiny ViT + BERT fusion model: attention pooling of the text tokens, cross-attention fusion, 3 classes."""
    encoders = build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))
    return build_fusion_classifier(
        {"image": encoders["vision"], "text": encoders["text"]},
        [Task("label", "single_label_classification", ["x", "y", "z"])],
        fusion="cross_attention",
        text_pooling="attention",
    )


def test_sdpa_equals_eager_for_the_classifier_and_fusion_models(tiny_vtde, fusion_model):
    classifier = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random").eval()
    pixels = {"pixel_values": torch.randn(3, 3, 32, 32)}
    fusion = copy.deepcopy(fusion_model).eval()
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
            "--test_dir", str(digits_dir / "test"), "--do_train", "--do_predict", "--max_steps", "2", "--max_train_samples", "16", "--max_predict_samples", "8",
            "--finetune_strategy", "full", "--head_init", "random", "--per_device_train_batch_size", "8",
            "--tf32", "false", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
        ])  # fmt: skip
    assert "GPU fast paths on NVIDIA H200 (capability 9.0): --bf16 True, --optim adamw_torch_fused" in caplog.text
    assert "attention per tower (--attn_implementation sdpa): {'media': 'sdpa'}" in caplog.text
    assert "train MFU" in caplog.text and "NVIDIA H200 peak 9.89e+14 bf16 FLOP/s" in caplog.text
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
    shown = _card_hyperparameters(config)  # the card names a precision switch when it is on, never when off
    assert shown["bf16"] is True and "tf32" not in shown
    assert _card_hyperparameters({**config, "tf32": True})["tf32"] is True


def _train_step(model, batch, compile_backend=None) -> tuple[float, torch.Tensor]:
    """(loss, a trained weight after one SGD step) of `model` (eval mode: no dropout draws to match)."""
    model = copy.deepcopy(model).eval()
    step = torch.compile(model, backend=compile_backend, fullgraph=True) if compile_backend else model
    loss = step(**batch).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return loss.item(), next(p for n, p in model.named_parameters() if "classifier" in n or "heads" in n).detach()


def test_torch_compile_of_the_fusion_layers_gives_the_eager_step(fusion_model):
    """Fast variant (the classifier and the towers: the slow test below): the layers a fusion model adds (attention
    pooling, cross-attention fusion, head, loss) on cached tower outputs, traced by dynamo as one graph (fullgraph:
    no graph break) and trained one step to the eager step's loss and weights."""
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4] * 2)
    batch = {"image_embeds": torch.randn(4, 32), "text_embeds": torch.randn(4, 7, 32), "text_embeds_mask": mask,
             "labels": torch.tensor([0, 1, 2, 0])}  # fmt: skip
    model = fusion_model
    eager_loss, eager_weight = _train_step(model, batch)
    loss, weight = _train_step(model, batch, compile_backend="eager")
    assert loss == pytest.approx(eager_loss, rel=1e-6)
    torch.testing.assert_close(weight, eager_weight)


def _without_dropout(model: nn.Module) -> nn.Module:
    """`model` with every dropout at 0 (nn.Dropout, attention dropout, modality dropout): compiled code draws its
    random numbers differently from eager, so only a step without any draw can be compared number for number."""
    for module in model.modules():
        for name in ("p", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


@pytest.mark.slow  # inductor compiles the towers too: about a minute per model on 2 CPU cores, 4-5 when loaded
@pytest.mark.parametrize("kind", ["classifier", "fusion"])
def test_torch_compile_through_the_trainer_trains_the_eager_step(kind, tiny_vtde, fusion_model, tmp_path):
    """--torch_compile (inductor) through Trainer: the classifier and the fusion model, towers included, train 2
    steps to the losses of the same runs uncompiled."""
    pixels = torch.randn(8, 3, 32, 32)
    if kind == "classifier":
        model = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random")
        rows = [{"pixel_values": pixels[i], "labels": torch.tensor(i % 2)} for i in range(8)]
    else:
        model = copy.deepcopy(fusion_model)
        rows = [
            {"pixel_values": pixels[i], "input_ids": torch.randint(5, 20, (7,)), "attention_mask": torch.ones(7),
             "labels": torch.tensor(i % 3)} for i in range(8)
        ]  # fmt: skip
    model, losses = _without_dropout(model), {}
    for compiled in (False, True):
        args = TrainingArguments(
            str(tmp_path / kind), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to="none",
            save_strategy="no", disable_tqdm=True, logging_steps=1, torch_compile=compiled, seed=0,
            learning_rate=1e-3, lr_scheduler_type="constant", label_names=["labels"], remove_unused_columns=False,
        )  # fmt: skip
        trainer = Trainer(model=copy.deepcopy(model), args=args, train_dataset=rows)
        trainer.train()
        losses[compiled] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-4)
