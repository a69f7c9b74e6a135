"""Text never longer than the text tower has positions for: retrieval captions, zero-shot class prompts, fusion text."""

import logging
import shutil

import pytest
import torch
from conftest import load_recipe
from transformers import AutoTokenizer, ClapConfig, CLIPConfig, CLIPModel, CLIPProcessor

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.models import build_dual_encoder_classifier, class_text_embeddings, text_length
from mm_hf.models.text_length import text_max_length, text_positions
from mm_hf.processing import MultimodalProcessor, ProcessorSettings

recipe = load_recipe("clip_retrieval")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    text_length._warned.clear()  # each test sees its own one-time warning


@pytest.fixture(scope="module")
def clip32(tiny_clip, tmp_path_factory):
    """The tiny CLIP with a text tower of 32 positions; its tokenizer still says model_max_length=64."""
    config = CLIPConfig.from_pretrained(tiny_clip)
    config.text_config.max_position_embeddings = 32
    path = str(tmp_path_factory.mktemp("clip32"))
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor.from_pretrained(tiny_clip).save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).model_max_length == 64
    return path


@pytest.fixture(scope="module")
def pairs_dir(digits_dir, tmp_path_factory):
    from mm_hf.demo import write_digit_captions

    root = tmp_path_factory.mktemp("pairs") / "digits"
    shutil.copytree(digits_dir, root)
    write_digit_captions(str(root))
    return root


def warnings_naming(caplog, *numbers):
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and all(str(n) in r.getMessage() for n in numbers)
    ]


def test_retrieval_with_the_default_max_seq_length_runs_on_32_positions(clip32, pairs_dir, tmp_path, caplog):
    """Default --max_seq_length 64 on a 32-position text tower: captions and zero-shot prompts are cut to 32
    (without the cap CLIP raises "Sequence length must be less than max_position_embeddings")."""
    long_prompt = "a photo of a handwritten digit that somebody wrote down on a piece of paper: {}."
    args = ["--model_name_or_path", clip32, "--output_dir", str(tmp_path / "out"), "--do_train", "--do_eval",
            "--train_dir", str(pairs_dir / "train"), "--validation_dir", str(pairs_dir / "validation"),
            "--max_steps", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
            "--zeroshot_eval_dir", str(pairs_dir / "validation"), "--prompt_templates", long_prompt]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        results = recipe.main(args)
    assert "eval_image_to_text_recall@1" in results and "eval_zeroshot_cls_accuracy" in results
    recipe_warnings = warnings_naming(caplog, "--max_seq_length 64", "32 position embeddings")
    assert len(recipe_warnings) == 1, recipe_warnings
    # The class prompts (tokenizer limit 64) were capped too, with one warning for the whole run.
    assert len(warnings_naming(caplog, "model_max_length 64", "32 position embeddings")) == 1


def test_zero_shot_head_from_long_prompts_truncates_at_the_positions(clip32, caplog):
    backbone = CLIPModel.from_pretrained(clip32).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip32)
    stem = "a photo of {} taken on a sunny afternoon"
    assert len(tokenizer(stem.format("cat"))["input_ids"]) > 32
    with caplog.at_level(logging.WARNING):
        model = build_dual_encoder_classifier(
            backbone, {0: "cat", 1: "dog"}, tokenizer=tokenizer, prompt_templates=[stem]
        )
    assert warnings_naming(caplog, "64", "32")
    assert torch.isfinite(model.classifier.weight).all()
    # Words past the 32nd token are cut: appending more text changes nothing.
    longer = class_text_embeddings(backbone, tokenizer, ["cat"], [stem + " by the river in spring"])
    torch.testing.assert_close(class_text_embeddings(backbone, tokenizer, ["cat"], [stem]), longer)


def test_fusion_text_is_capped_at_the_text_encoders_positions(clip32, caplog):
    with caplog.at_level(logging.WARNING):
        processor = MultimodalProcessor.from_encoders({"text": clip32}, ProcessorSettings(["text"], max_length=128))
    assert processor.settings.max_length == 32
    assert warnings_naming(caplog, "128", "32 position embeddings")
    batch = processor.transform(train=False)({"text": ["a long text " * 20]})
    assert batch["input_ids"][0].shape == (32,)


def test_limits_come_from_the_tokenizer_or_the_positions(clip32):
    tokenizer = AutoTokenizer.from_pretrained(clip32)
    config = CLIPConfig.from_pretrained(clip32)
    assert text_max_length(tokenizer, config, 16) == 16  # within both limits: as asked
    assert text_max_length(tokenizer, config) == 32  # the tokenizer's 64 capped at 32 positions
    config.text_config.max_position_embeddings = 128
    assert text_max_length(tokenizer, config, 100) == 64  # now the tokenizer is the limit
    # RoBERTa-style towers (CLAP's) number positions from padding_idx + 1: 70 positions, pad id 1 -> 68 tokens.
    clap = ClapConfig(text_config={"max_position_embeddings": 70, "pad_token_id": 1})
    assert text_positions(clap) == 68
