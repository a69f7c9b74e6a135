"""recipes/video_cls.py on short synthetic PyAV clips (frames + sound track + transcript), and why temporal pooling
must see frame order."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import load_recipe
from transformers import AutoModel, AutoModelForSequenceClassification

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.corruptions import CORRUPTIONS, CorruptColumn, corruption_rng
from mm_hf.data.synthetic import write_video_dataset
from mm_hf.data.video import load_video_frames, make_moving_shape_clip, write_synthetic_video
from mm_hf.models.pooling import MeanPooling, TransformerPooling
from mm_hf.models.tiny import build_tiny_encoders
from mm_hf.processing import MultimodalProcessor, ProcessorSettings

recipe = load_recipe("video_cls")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_video_dataset(str(tmp_path_factory.mktemp("videos")), sizes=(80, 16, 40), seed=0)


def run(encoders, data, out, *extra, epochs=10):
    args = [
        "--vision_model_name_or_path", encoders["vision"], "--video_column", "video", "--label_column", "label",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", "--finetune_strategy", "full",
        "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--hidden_size", "32", "--num_frames", "8", "--max_seq_length", "12", "--max_length_seconds", "1",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        "--eval_strategy", "no", "--head_dropout", "0",
    ]  # fmt: skip
    return recipe.main(args + list(extra))


def test_frames_and_transcript_train_and_reload(encoders, videos, tmp_path, fusion_pixel_dtypes):
    out = tmp_path / "out"
    results = run(encoders, videos, out, "--text_model_name_or_path", encoders["text"], "--text_column", "transcript")
    # The Trainer's frames came as uint8 (normalised by the model); the reload below gets the float ones.
    assert len(fusion_pixel_dtypes) > 10 and set(fusion_pixel_dtypes) == {torch.uint8}
    # The label is the order of the frames' colours (red-to-blue vs blue-to-red, ...): the temporal transformer
    # learns it; without the frames only the (uninformative) transcript is left.
    assert results["test_accuracy"] >= 0.9, results
    assert results["test_without_video_accuracy"] <= 0.4 and results["test_without_text_accuracy"] >= 0.9
    config = json.loads((out / "config.json").read_text())
    assert config["modalities"] == ["video", "text"] and config["temporal_pooling"] == "transformer"
    assert json.loads((out / "multimodal_processor.json").read_text())["num_frames"] == 8

    # The saved folder gives the reported accuracy on the test clips.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    processor = MultimodalProcessor.from_pretrained(str(out))
    rows = [json.loads(line) for line in open(videos["test"])]
    root = os.path.dirname(videos["test"])
    batch = {"video": [os.path.join(root, r["video"]) for r in rows], "text": [r["transcript"] for r in rows]}
    inputs = processor.transform(train=False)(batch)
    with torch.no_grad():
        logits = model(**{k: torch.stack(v) for k, v in inputs.items()}).logits
    labels = torch.tensor([model.config.tasks[0]["labels"].index(r["label"]) for r in rows])
    assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(results["test_accuracy"])


def test_averaging_frames_cannot_tell_the_order(encoders, videos, tmp_path):
    results = run(
        encoders, videos, tmp_path / "out", "--text_model_name_or_path", encoders["text"],
        "--text_column", "transcript", "--temporal_pooling", "mean",
    )  # fmt: skip
    # Mean pooling tells the colour pair (2 of the 4 classes' pairs) but not its direction: about 0.5.
    # ...and it does learn the pair: above the 0.25 of 4 classes (measured 0.50).
    assert 0.4 <= results["test_accuracy"] <= 0.65, results


def test_sound_track_as_the_audio_modality(encoders, tiny_wav2vec2, tmp_path):
    data = write_video_dataset(str(tmp_path / "data"), sizes=(8, 4, 4), seed=1)
    out = tmp_path / "out"
    results = run(
        encoders, data, out, "--audio_model_name_or_path", tiny_wav2vec2, "--audio_from_video",
        "--fusion", "gated", "--train_val_split", "0", epochs=1,
    )  # fmt: skip
    assert {"test_without_video_accuracy", "test_without_audio_accuracy"} <= set(results)
    assert json.loads((out / "config.json").read_text())["modalities"] == ["video", "audio"]
    assert json.loads((out / "multimodal_processor.json").read_text())["audio_from_video"] is True
    assert {"image_processor", "feature_extractor"} <= set(os.listdir(out))
    with pytest.raises(ValueError, match="--audio_from_video needs"):
        run(encoders, data, tmp_path / "bad", "--audio_from_video", epochs=1)


def test_a_clip_without_sound_track_has_its_audio_marked_missing(tiny_wav2vec2, encoders, tmp_path):
    silent = write_synthetic_video(str(tmp_path / "silent.mp4"), make_moving_shape_clip(0, 8, 32))
    t = np.arange(8000) / 16000
    sound = write_synthetic_video(
        str(tmp_path / "sound.mp4"), make_moving_shape_clip(1, 8, 32), audio=np.sin(2 * np.pi * 440 * t)
    )
    settings = ProcessorSettings(["video", "audio"], num_frames=4, audio_from_video=True, max_length_seconds=1)
    processor = MultimodalProcessor.from_encoders({"video": encoders["vision"], "audio": tiny_wav2vec2}, settings)
    out = processor.transform(train=False)({"video": [silent, sound, None]})
    assert [m.tolist() for m in out["modality_mask"]] == [[1, 0], [1, 1], [0, 0]]
    assert out["pixel_values_videos"][0].shape == (4, 3, 32, 32)
    assert torch.count_nonzero(out["pixel_values_videos"][2]) == 0


def test_temporal_transformer_learns_direction_where_frame_averaging_cannot():
    """Per-frame vectors encode a square's position; the class is its direction. The mean over frames is the
    path's centre (random), so only a pooling that sees order can tell right from left."""
    torch.manual_seed(0)
    n, frames, dim = 512, 8, 16
    direction = torch.randint(0, 4, (n,))
    steps = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])[direction]  # (n, 2)
    centre = torch.rand(n, 2) * 4 - 2
    positions = centre[:, None] + steps[:, None] * torch.linspace(-1, 1, frames)[None, :, None]  # (n, T, 2)
    embed = torch.randn(2, dim)
    features = positions @ embed + 0.05 * torch.randn(n, frames, dim)

    def train(pooling):
        torch.manual_seed(0)
        model = torch.nn.Sequential()
        head = torch.nn.Linear(dim, 4)
        params = list(pooling.parameters()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=3e-3)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(head(pooling(features[:384])), direction[:384])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        del model
        with torch.no_grad():
            return (head(pooling(features[384:])).argmax(-1) == direction[384:]).float().mean().item()

    transformer = train(TransformerPooling(dim, num_layers=1, num_heads=4, max_length=frames))
    mean = train(MeanPooling())
    assert transformer >= 0.9 and mean <= 0.45, (transformer, mean)


# The card's snippet for a video run, where mm_hf cannot be imported.
REMOTE_VIDEO = r"""
import json, sys
sys.modules["mm_hf"] = None
import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForVideoClassification, AutoProcessor
folder = sys.argv[1]
model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
# The processor shipped with the checkpoint, fed decoded frames (uint8 (B, T, H, W, 3) saved by the test).
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
videos = [[Image.fromarray(frame) for frame in clip] for clip in np.load(folder + "/frames.npy")]
with torch.no_grad():
    logits = model(**torch.load(folder + "/inputs.pt")).logits
    processed = model(**processor(videos=videos)).logits
print(json.dumps({"logits": logits.tolist(), "processed": processed.tolist(), "module": type(model).__module__}))
"""


def test_video_checkpoint_loads_as_a_video_classifier_without_mm_hf(encoders, tmp_path):
    """The card advertises AutoModelForVideoClassification (the transformers video pipeline cannot drive a model
    whose frames go through MultimodalProcessor, so the card claims no pipeline tag)."""
    import subprocess
    import sys

    from huggingface_hub import ModelCard
    from transformers import AutoModelForVideoClassification

    data = write_video_dataset(str(tmp_path / "data"), sizes=(8, 4, 4), seed=2)
    out = tmp_path / "out"
    run(encoders, data, out, "--max_steps", "1", "--num_frames", "2", epochs=1)
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag is None and "video-classification" in card.data.tags
    assert "AutoModelForVideoClassification.from_pretrained(" in card.text
    assert '"video": ["clip.mp4"]' in card.text
    assert json.loads((out / "run_info.json").read_text())["base_model"] == [encoders["vision"]]  # one per encoder

    model = AutoModelForVideoClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "MultimodalFusionForClassification"
    processor = MultimodalProcessor.from_pretrained(str(out))
    rows = [json.loads(line) for line in open(data["test"])]
    inputs = processor.transform(train=False)(
        {"video": [os.path.join(os.path.dirname(data["test"]), r["video"]) for r in rows]}
    )
    inputs = {k: torch.stack(v) for k, v in inputs.items()}
    torch.save(inputs, out / "inputs.pt")
    clips = [load_video_frames(os.path.join(os.path.dirname(data["test"]), r["video"]), 2) for r in rows]
    np.save(out / "frames.npy", np.stack([np.stack([np.asarray(frame) for frame in clip]) for clip in clips]))
    with torch.no_grad():
        expected = model(**inputs).logits
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_VIDEO, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not remote["module"].startswith("mm_hf")
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected)
    torch.testing.assert_close(torch.tensor(remote["processed"]), expected, rtol=0, atol=1e-5)


def test_video_corruptions_hit_every_decoded_frame_seeded_per_row(encoders, tiny_wav2vec2, tmp_path):
    """The sweep's video path: each clip's decoded frames (not the file) are corrupted, every frame with the clip's
    draws, reproducibly per row index; a missing clip stays missing and the sound track is still the file's."""
    t = np.arange(8000) / 16000
    clip = write_synthetic_video(str(tmp_path / "clip.mp4"), make_moving_shape_clip(0, 8, 32),
                                 audio=np.sin(2 * np.pi * 440 * t))  # fmt: skip
    settings = ProcessorSettings(["video", "audio"], num_frames=4, audio_from_video=True, max_length_seconds=1)
    processor = MultimodalProcessor.from_encoders({"video": encoders["vision"], "audio": tiny_wav2vec2}, settings)
    transform = processor.transform(train=False)
    clean = transform({"video": [clip, clip, None]})

    def corrupted(name, severity, seed=0):
        column = CorruptColumn(transform, modality="video", corruption=name, severity=severity, seed=seed,
                               index_column="row", num_frames=4)  # fmt: skip
        return column({"video": [clip, clip, None], "row": [0, 1, 2]})

    noisy = corrupted("gaussian_noise", 3)
    assert torch.equal(torch.stack(noisy["pixel_values_videos"]), torch.stack(corrupted("gaussian_noise", 3)[
        "pixel_values_videos"]))  # fmt: skip
    assert not torch.equal(noisy["pixel_values_videos"][0], noisy["pixel_values_videos"][1])  # rows draw their own
    assert not torch.equal(
        noisy["pixel_values_videos"][0], corrupted("gaussian_noise", 3, seed=1)["pixel_values_videos"][0]
    )
    assert [m.tolist() for m in noisy["modality_mask"]] == [[1, 1], [1, 1], [0, 0]]
    assert torch.count_nonzero(noisy["pixel_values_videos"][2]) == 0
    torch.testing.assert_close(noisy["input_values"][1], clean["input_values"][1])  # the sound track, uncorrupted

    # Exactly the image corruption of each evaluation frame, with the row's generator made afresh for every frame.
    frames = load_video_frames(clip, 4)
    column = CorruptColumn(transform, modality="video", corruption="rotation", severity=2, num_frames=4)
    expected = [CORRUPTIONS["image"]["rotation"](f, 2, corruption_rng(0, 5, "rotation")) for f in frames]
    got = column.corrupt(clip, 5)
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))

    # A stronger severity moves the frame encoder's embeddings further from the clean clip's, on average.
    encoder = AutoModel.from_pretrained(encoders["vision"]).eval()

    def embed(inputs):
        with torch.no_grad():  # (2 clips x 4 frames, 3, H, W) -> per-frame pooled vectors
            return encoder(torch.cat(inputs["pixel_values_videos"][:2])).last_hidden_state.mean(1)

    reference = embed(clean)
    for name in ("gaussian_noise", "rotation"):
        distances = [(embed(corrupted(name, s)) - reference).norm(dim=-1).mean().item() for s in (1, 3, 5)]
        assert distances[0] > 0 and np.all(np.diff(distances) >= 0), (name, distances)
    with pytest.raises(ValueError, match="num_frames"):
        CorruptColumn(transform, modality="video", corruption="fog", severity=1)
    with pytest.raises(ValueError, match=r"Unknown video corruption 'noise'; choose from \[.*'gaussian_noise'"):
        CorruptColumn(transform, modality="video", corruption="noise", severity=1, num_frames=4)
