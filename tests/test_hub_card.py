"""mm_hf.cards: the model card's metadata, as the Hub reads it back from README.md."""

import json

import pytest
import yaml
from huggingface_hub import metadata_load

from mm_hf.cards import RunInfo, write_model_card, write_run_info


def card_metadata(tmp_path, base_model) -> dict:
    info = RunInfo(
        task="multimodal (image + text) classification",
        pipeline_tag=None,
        eval_task_type="multimodal-classification",
        base_model=base_model,
        dataset="local-data",
        command="accelerate launch recipes/fusion_imagetext_cls.py",
        eval_split="test",
        saved_as="full",
        trainable={"trainable_params": 10, "total_params": 100, "trainable_share_percent": 10.0},
        train_runtime=1.0,
        usage="fusion",
    )
    write_run_info(str(tmp_path), info)
    (tmp_path / "all_results.json").write_text(json.dumps({"test_accuracy": 0.5, "test_samples": 4}))
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-3}))
    card = write_model_card(str(tmp_path))
    return card, metadata_load(tmp_path / "README.md")


def test_fusion_card_lists_every_encoder_as_a_base_model(tmp_path):
    """The Hub's base_model is a model id or a list of them: an "a + b" string is no id and gets dropped."""
    card, metadata = card_metadata(tmp_path, ["google/vit-base-patch16-224", "sentence-transformers/all-MiniLM-L6-v2"])
    assert metadata["base_model"] == ["google/vit-base-patch16-224", "sentence-transformers/all-MiniLM-L6-v2"]
    assert "[google/vit-base-patch16-224](https://huggingface.co/google/vit-base-patch16-224) + " in card.text
    assert "`google/vit-base-patch16-224` + `sentence-transformers/all-MiniLM-L6-v2`" in card.text  # summary


@pytest.mark.parametrize(
    ("base_model", "expected"),
    [("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32"), (["org/vision", "/local/text"], "org/vision")],
)
def test_single_hub_base_model_stays_a_string_and_local_paths_are_left_out(tmp_path, base_model, expected):
    _, metadata = card_metadata(tmp_path, base_model)
    assert metadata["base_model"] == expected
