"""Offline, seeded test setup: tiny dual encoders built from configs and a small digits dataset."""

import importlib.util
import os
import random
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# No DataLoader workers unless a test asks: forking them costs the tiny runs more than it saves (2 workers: three
# clip_imagecls tests 12.0 -> 16.3 s on 2 cores), and more on machines where the CPU-count default would start 3-4.
os.environ["MM_HF_DATALOADER_WORKERS"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ helpers such as hub_server


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package)."""
    path = os.path.join(REPO, "recipes", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def config_model_folders(monkeypatch, tmp_path):
    """make_folders(config dict): a temporary working directory holding an empty folder for every relative
    `*model_name_or_path` the config names, so a shipped config parses on a fresh clone (no demo assets yet): a
    path like demo_out/sentiment/encoders/vision is neither a folder there nor a Hub id, and parsing refuses it."""
    monkeypatch.chdir(tmp_path)

    def make_folders(config: dict) -> None:
        for key, value in config.items():
            if key.endswith("model_name_or_path") and isinstance(value, str) and not os.path.isabs(value):
                os.makedirs(tmp_path / value, exist_ok=True)

    return make_folders


@pytest.fixture
def fusion_pixel_dtypes(monkeypatch):
    """A list that grows by the dtype of the pixels (`pixel_values` or `pixel_values_videos`) every forward pass of
    a fusion recipe's model gets from its Trainer, recorded before the uint8 normaliser runs."""
    from mm_hf.processing import MultimodalProcessor

    seen = []
    accept_uint8 = MultimodalProcessor.accept_uint8

    def record(module, args, kwargs):
        seen.extend(kwargs[key].dtype for key in ("pixel_values", "pixel_values_videos") if key in kwargs)

    def recording(self, model):  # registered first, so it sees what the DataLoader handed over
        model.multimodal.register_forward_pre_hook(record, with_kwargs=True)
        return accept_uint8(self, model)

    monkeypatch.setattr(MultimodalProcessor, "accept_uint8", recording)
    return seen


@pytest.fixture
def image_encoder_calls(monkeypatch):
    """A list that grows by the batch size at every image-tower pass of the dual-encoder classifiers (what a
    feature cache saves)."""
    from mm_hf.models import ClipClassifierForImageClassification

    calls = []
    original = ClipClassifierForImageClassification.get_image_features

    def counting(self, pixel_values):
        calls.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(ClipClassifierForImageClassification, "get_image_features", counting)
    return calls


@pytest.fixture(scope="session")
def tiny_vtde(tmp_path_factory):
    """A tiny VisionTextDualEncoder (random ViT + BERT, word-level vocab) with its processor, 32x32 input."""
    from mm_hf.models.tiny import build_tiny_dual_encoder

    return build_tiny_dual_encoder(str(tmp_path_factory.mktemp("tiny_vtde")), image_size=32, patch_size=8)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny CLIPModel with a character-level CLIP tokenizer and a CLIP image processor (30x30)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz.{} "
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars.strip():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=30,
            patch_size=6,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    path = str(tmp_path_factory.mktemp("tiny_clip"))
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory):
    """A tiny ClapModel (2-stage HTSAT audio tower, 2-layer RoBERTa text tower, character-level BPE vocab) with
    a 16 kHz ClapProcessor cutting/padding clips to 1 s (32 mel bins)."""
    import json

    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    path = str(tmp_path_factory.mktemp("tiny_clap"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in "abcdefghijklmnopqrstuvwxyz.{}":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("\u0120" + c, len(vocab))  # byte-level BPE's marker for a preceding space
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = RobertaTokenizer(
        os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=64
    )
    config = ClapConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=70,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
        audio_config=dict(
            spec_size=64,
            num_mel_bins=32,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16,
            hidden_size=32,
            window_size=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(path)
    extractor = ClapFeatureExtractor(
        feature_size=32,
        sampling_rate=16000,
        hop_length=160,
        max_length_s=1,
        fft_window_size=400,
        frequency_max=8000,
        truncation="rand_trunc",
    )
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):  # the processor saved its own copies
        assert os.path.exists(os.path.join(path, name))
    return path


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory):
    """A random 2-layer wav2vec2 (hidden 32, 20x conv downsampling) with a 16 kHz feature extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    path = str(tmp_path_factory.mktemp("tiny_wav2vec2"))
    torch.manual_seed(0)  # module fixtures run before conftest's per-test seeding
    Wav2Vec2Model(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    """A tiny SiglipModel (weights only; no tokenizer)."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=dict(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
    )
    path = str(tmp_path_factory.mktemp("tiny_siglip"))
    SiglipModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """Class folders zero..three of sklearn digits: 12 train / 4 validation / 5 test images per class."""
    from mm_hf.demo import write_digits_imagefolder

    root = tmp_path_factory.mktemp("digits")
    write_digits_imagefolder(str(root), classes=range(4), max_per_class=21, fractions=(0.58, 0.2, 0.22))
    return root


@pytest.fixture(scope="session")
def colours_dir(tmp_path_factory):
    """Class folders red/green/blue of noisy colour tiles (32x32, a grey rectangle each): 12 train / 4 validation /
    6 test per class, easy enough that a few steps of training must beat a chance-level start. Each split also has
    a metadata.jsonl with two captions per image naming its colour, for image-text retrieval."""
    import json

    from PIL import Image

    colours = {"blue": (40, 60, 200), "green": (40, 170, 60), "red": (200, 40, 40)}
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("validation", 4), ("test", 6)):
        rows = []
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                tile = np.array(rgb, dtype=np.float32) + rng.normal(0, 25, (32, 32, 3))
                x, y = rng.integers(0, 16, 2)
                tile[y : y + rng.integers(8, 16), x : x + rng.integers(8, 16)] = rng.integers(60, 200)
                Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
                rows.append({"file_name": f"{name}/{i}.png", "caption": [f"a {name} photo.", f"a picture of {name}."]})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def sweep_argv(tiny_vtde, digits_dir, tmp_path, backend: str, n_trials: int) -> list[str]:
    """clip_imagecls argv of an --hp_search sweep over the learning rate (tests/test_sweeps*.py); output in
    tmp_path / "out"."""
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}\n")
    return [
        "--model_name_or_path", str(tiny_vtde), "--output_dir", str(tmp_path / "out"),
        "--train_dir", str(digits_dir / "train"), "--validation_dir", str(digits_dir / "validation"),
        "--do_train", "--do_eval", "--finetune_strategy", "full", "--head_init", "zeroshot",
        "--prompt_templates", "a photo of the digit {}.", "--max_steps", "2", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
        "--hp_search", backend, "--n_trials", str(n_trials), "--hp_space", str(space), "--metric_for_best_model", "loss",
    ]  # fmt: skip
