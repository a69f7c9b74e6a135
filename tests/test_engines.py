"""The shipped accelerate configs (recipes/accelerate/*.yaml) as accelerate reads them, FSDP's transformer auto-wrap on
every mm-hf model family, and the engine checks of mm_hf.engines.

accelerate runs FSDP and DeepSpeed on GPUs only (its state turns them on for GPU-like devices, never MULTI_CPU), so
here each config goes through accelerate's own launcher parsing into the environment it would export, and the
plugins are built from that environment as the launched processes would build them; the real runs are in
scripts/gpu_smoke.sh. The 2-process FSDP run below (slow) wraps a model as accelerate would, by torch directly (gloo).
The DeepSpeed test that needs deepspeed runs where it is importable, e.g. PYTHONPATH=<site-packages with deepspeed>.
"""

import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.engines import check_engine, launcher_environment, requested_engine

CONFIGS = os.path.join(REPO, "recipes", "accelerate")
# The engine each shipped config asks for, and how many machines.
EXPECTED = {
    "cpu_2proc.yaml": ("MULTI_GPU", 1),
    "multi_gpu.yaml": ("MULTI_GPU", 1),
    "multi_node.yaml": ("MULTI_GPU", 2),
    "fsdp.yaml": ("FSDP", 1),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 1),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 1),
}


def launcher_env(name: str) -> dict:
    return launcher_environment(os.path.join(CONFIGS, name))


def test_every_shipped_config_is_listed_and_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))) == sorted(EXPECTED)
    for name, (engine, machines) in EXPECTED.items():
        config = load_config_from_file(os.path.join(CONFIGS, name))
        assert (str(config.distributed_type).rsplit(".", 1)[-1], config.num_machines) == (engine, machines), name
        # Each file starts with what it is for and the exact launch command.
        header = open(os.path.join(CONFIGS, name)).read().split("compute_environment")[0]
        assert f"--config_file recipes/accelerate/{name}" in header, name


def test_fsdp_config_is_full_shard_transformer_wrap_with_sharded_checkpoints():
    env = launcher_env("fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT" and env["FSDP_USE_ORIG_PARAMS"] == "true"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # every process runs the model before training
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env  # read from each model's _no_split_modules


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_as_accelerate_builds_them(monkeypatch, name, stage):
    """The DeepSpeed config accelerate's plugin builds from the launcher's environment: the ZeRO stage, no
    offload, batch/accumulation/clipping left "auto" for the Trainer to fill from TrainingArguments, and (ZeRO-3)
    the 16-bit weights gathered when the model is saved. deepspeed itself is not needed for this."""
    from accelerate.utils import DeepSpeedPlugin

    env = launcher_env(name)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = DeepSpeedPlugin().deepspeed_config
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
    auto = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
    assert {config[k] for k in auto} == {"auto"}


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="deepspeed not installed")
@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_accepts_the_trainer_filled_config(monkeypatch, name):
    """Opt-in (needs deepspeed): the Trainer fills the "auto" values from TrainingArguments and DeepSpeed's own
    config parser accepts the result."""
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    for key, value in launcher_env(name).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    for key in list(os.environ):
        if key.startswith("ACCELERATE_"):
            monkeypatch.delenv(key)
    args = TrainingArguments("out", per_device_train_batch_size=4, gradient_accumulation_steps=2, use_cpu=True)
    filled = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    filled.trainer_config_process(args)
    filled.config["train_batch_size"] = 4 * 2  # world size 1
    parsed = DeepSpeedConfig(filled.config)
    assert parsed.zero_optimization_stage == int(name[-6])
    assert parsed.gradient_accumulation_steps == 2 and parsed.train_micro_batch_size_per_gpu == 4


# ---- FSDP auto-wrap on every model family ----


def _tiny_whisper_encoder_classifier():
    from transformers import WhisperConfig, WhisperModel

    from mm_hf.models import build_audio_classifier

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16,
                           max_source_positions=50, max_target_positions=16, vocab_size=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    return build_audio_classifier(WhisperModel(config), {0: "a", 1: "b"})


def _families(tiny_vtde, tiny_clap, tiny_wav2vec2, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from mm_hf.models import (
        ContrastiveDualEncoderModel,
        build_audio_classifier,
        build_dual_encoder_classifier,
        build_fusion_classifier,
    )
    from mm_hf.models.fusion import Task
    from mm_hf.models.tiny import build_tiny_encoders

    labels = {0: "zero", 1: "one"}
    encoders = build_tiny_encoders(str(tmp_path / "encoders"))
    task = Task("label", "single_label_classification", ["a", "b"])
    return {
        "clip_classifier": build_dual_encoder_classifier(
            tiny_vtde, labels, tokenizer=AutoTokenizer.from_pretrained(tiny_vtde)
        ),
        "clap_classifier": build_dual_encoder_classifier(
            tiny_clap, labels, tokenizer=AutoTokenizer.from_pretrained(tiny_clap)
        ),
        "audio_classifier_wav2vec2": build_audio_classifier(tiny_wav2vec2, labels, pooling="attention"),
        "audio_classifier_whisper": _tiny_whisper_encoder_classifier(),
        "fusion": build_fusion_classifier({"image": encoders["vision"], "text": encoders["text"]}, [task]),
        "contrastive": ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_vtde)),
    }


def test_fsdp_auto_wrap_finds_every_tower_block_of_every_family(
    monkeypatch, tiny_vtde, tiny_clap, tiny_wav2vec2, tmp_path
):
    """accelerate's FSDP wrap policy, built from fsdp.yaml's environment and the model's `_no_split_modules`, makes
    each block of each tower a shard unit and never a head. Before mm_hf listed them, the fusion model, wav2vec2 and
    CLAP declared nothing (one unit: the towers unsharded until the whole model is gathered) and a Whisper
    classifier declared WhisperDecoderLayer, which it does not hold (accelerate: "Could not find the transformer
    layer class")."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from peft import LoraConfig, get_peft_model

    for key, value in launcher_env("fsdp.yaml").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # accelerate's plugin sets it up on a GPU only

    def wrapped_by_accelerate(model) -> set[str]:
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_auto_wrap_policy(model)
        classes = tuple(plugin.auto_wrap_policy.keywords["transformer_layer_cls"])
        return {n for n, m in model.named_modules() if isinstance(m, classes)}

    for name, model in _families(tiny_vtde, tiny_clap, tiny_wav2vec2, tmp_path).items():
        wrapped = wrapped_by_accelerate(model)
        parts = model.parts()
        assert parts.towers, name
        for tower in parts.towers.values():
            blocks = model.get_submodule(f"{tower.path}.{tower.layers}")
            assert {f"{tower.path}.{tower.layers}.{i}" for i in range(len(blocks))} <= wrapped, name
        assert not any(n == h or n.startswith(h + ".") for n in wrapped for h in parts.head), name
    # A LoRA model (a PeftModel around the classifier) resolves the same classes through peft's attribute lookup.
    lora = get_peft_model(
        _tiny_whisper_encoder_classifier(), LoraConfig(target_modules=["q_proj", "v_proj"], modules_to_save=["pooler"])
    )
    assert len(wrapped_by_accelerate(lora)) == 2  # the 2 Whisper encoder layers


def test_no_split_modules_follow_the_model_as_it_is(tiny_vtde):
    """The classifier drops its dual encoder's text tower after construction: the BERT classes its backbone
    declares go with it (accelerate would stop on a class it cannot find)."""
    from mm_hf.models import build_dual_encoder_classifier

    classifier = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random")
    assert "BertLayer" in classifier.backbone._no_split_modules  # as VisionTextDualEncoderModel was built
    assert classifier._no_split_modules == {"ViTLayer", "ViTEmbeddings"}
    assert not hasattr(classifier.backbone, "text_model")


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_fsdp_scalar_parameters_compute_the_same_and_save_as_scalars(monkeypatch, tiny_vtde, loss):
    """Under FSDP the scalar parameters (logit_scale, the sigmoid loss's logit_bias) become (1,): the contrastive
    loss and the classifier's logits are unchanged, and the saved state dict has them back as scalars."""
    from transformers import AutoModel

    from mm_hf.engines import prepare_for_engine, restore_scalars
    from mm_hf.models import ContrastiveDualEncoderModel, build_dual_encoder_classifier

    torch.manual_seed(0)
    pixels, ids = torch.randn(3, 3, 32, 32), torch.randint(5, 20, (3, 6))
    contrastive = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_vtde), loss=loss).eval()
    classifier = build_dual_encoder_classifier(tiny_vtde, {0: "a", 1: "b"}, head_init="random").eval()
    with torch.no_grad():
        before = contrastive(pixel_values=pixels, input_ids=ids, return_loss=True).loss
        logits = classifier(pixel_values=pixels).logits
    assert prepare_for_engine(contrastive) is contrastive and contrastive.backbone.logit_scale.shape == ()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for model in (contrastive, classifier):
        prepare_for_engine(model)
    reshaped = [n for n, p in contrastive.named_parameters() if p.shape == (1,)]
    assert "backbone.logit_scale" in reshaped and ("logit_bias" in reshaped) == (loss == "siglip")
    with torch.no_grad():
        torch.testing.assert_close(contrastive(pixel_values=pixels, input_ids=ids, return_loss=True).loss, before)
        torch.testing.assert_close(classifier(pixel_values=pixels).logits, logits)
    state = restore_scalars(contrastive, contrastive.state_dict())
    assert state["backbone.logit_scale"].shape == () and all(state[n].shape == () for n in reshaped)


@pytest.mark.parametrize(("engine", "stage", "refused"), [("FSDP", None, True), ("DEEPSPEED", "3", True),
                                                     ("DEEPSPEED", "2", False)])  # fmt: skip
def test_lora_dual_encoder_under_a_sharding_engine_is_refused_before_training(
    monkeypatch, tiny_vtde, engine, stage, refused
):
    """clip_retrieval merges LoRA into the dual encoder on the main process, which FSDP / ZeRO-3 never let hold the
    whole model: refused when the Trainer is built, on every process, not after training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from mm_hf.engines import prepare_for_engine
    from mm_hf.errors import UserError
    from mm_hf.models import ContrastiveDualEncoderModel

    model = ContrastiveDualEncoderModel.from_backbone(AutoModel.from_pretrained(tiny_vtde))
    lora = get_peft_model(model, LoraConfig(target_modules=["query", "value"]))
    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
    if stage:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
    if refused:
        with pytest.raises(UserError, match=rf"LoRA dual encoder merged.*under {engine}.*multi_gpu.yaml"):
            prepare_for_engine(lora)
    else:
        assert prepare_for_engine(lora) is lora


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- what the recipes refuse ----


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_sharding_engine_on_cpu_is_refused_not_silently_ddp(monkeypatch, engine):
    from transformers import TrainingArguments

    from mm_hf.errors import UserError

    args = TrainingArguments("out", use_cpu=True)
    assert requested_engine() is None
    check_engine(args)  # no engine asked: nothing to refuse
    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
    assert requested_engine() == engine
    with pytest.raises(UserError, match=rf"asks for {engine}, which accelerate runs on GPUs only.*cpu_2proc.yaml"):
        check_engine(args)


@pytest.mark.slow  # ~15-40 s: two processes
def test_fsdp_two_processes_shard_train_and_save_a_normal_checkpoint(tiny_vtde, tmp_path):
    """On 2 gloo processes, a CLIP classifier is wrapped in FSDP as accelerate wraps it under fsdp.yaml (its plugin's
    transformer-layer policy from `_no_split_modules`, full shard, use_orig_params), its scalar parameters reshaped
    by `prepare_for_engine` (FSDP refuses them), one optimizer step is taken, and the full state dict gathered from
    the shards is saved with `save_pretrained`: it reloads through the Auto class and equals one unsharded step."""
    script = os.path.join(REPO, "tests", "fsdp_two_process.py")
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), script, tiny_vtde, str(out)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = yaml.safe_load((out / "report.yaml").read_text())
    tower = "backbone.vision_model"
    assert report["wrapped"] == ["", f"{tower}.embeddings", f"{tower}.layers.0", f"{tower}.layers.1"]
    assert report["local_fraction"] == pytest.approx(0.5, abs=0.01)  # each process holds half of every unit
    assert report["scalars"] == ["backbone.logit_scale", "classifier.logit_scale"]
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(out / "model")
    trained, initial = torch.load(out / "reference.pt"), torch.load(out / "initial.pt")
    assert reloaded.classifier.logit_scale.shape == ()
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trained[key], msg=key)
    assert not torch.equal(trained["classifier.weight"], initial["classifier.weight"])  # the step moved the head
