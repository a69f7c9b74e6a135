"""uint8 image batches through the DataLoader, normalised on the batch by the model, and the DataLoader defaults."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoProcessor, CLIPModel, default_data_collator

from mm_hf.data import transforms
from mm_hf.data.transforms import BatchPixelNormaliser, attach_pixel_normaliser, build_image_transform


@pytest.fixture
def photos(tmp_path):
    paths = []
    for seed, size in enumerate([(48, 40), (30, 60), (64, 64), (200, 150)]):
        values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = tmp_path / f"img{seed}.{'jpg' if seed == 3 else 'png'}"
        Image.fromarray(values).save(path)
        paths.append(str(path))
    return paths


def _batch(transform, paths):
    dataset = datasets.Dataset.from_dict({"image": paths, "labels": list(range(len(paths)))})
    loader = DataLoader(dataset.with_transform(transform), batch_size=len(paths), collate_fn=default_data_collator)
    return next(iter(loader))


def test_uint8_batches_give_the_float_paths_pixels_and_logits(tiny_clip, photos):
    image_processor = AutoProcessor.from_pretrained(tiny_clip).image_processor
    floats = _batch(build_image_transform(image_processor, train=False), photos)
    uint8 = _batch(build_image_transform(image_processor, train=False, uint8=True), photos)
    assert uint8["pixel_values"].dtype == torch.uint8 and floats["pixel_values"].dtype == torch.float32
    assert uint8["pixel_values"].shape == floats["pixel_values"].shape == (4, 3, 30, 30)
    assert uint8["labels"].tolist() == [0, 1, 2, 3]
    # The batch normaliser reproduces the per-image float path (to float32 rounding), and passes floats through.
    torch.testing.assert_close(
        BatchPixelNormaliser(image_processor)(uint8["pixel_values"]), floats["pixel_values"], rtol=0, atol=1e-6
    )
    assert BatchPixelNormaliser(image_processor)(floats["pixel_values"]) is floats["pixel_values"]

    model = CLIPModel.from_pretrained(tiny_clip).eval()

    def embeds(pixel_values):
        return model.get_image_features(pixel_values).pooler_output

    with torch.no_grad():
        expected = embeds(floats["pixel_values"])
        handles = attach_pixel_normaliser(model, image_processor)
        ids = torch.tensor([[0, 2, 1], [0, 4, 1]])
        # Both entry points (positional and keyword pixel_values) see normalised pixels.
        torch.testing.assert_close(embeds(uint8["pixel_values"]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(pixel_values=uint8["pixel_values"], input_ids=ids).logits_per_image,
                                   model(pixel_values=floats["pixel_values"], input_ids=ids).logits_per_image, rtol=1e-5, atol=1e-5)  # fmt: skip
        for handle in handles:
            handle.remove()
        # Without the hooks the raw bytes would reach the model: the check above is not vacuous.
        assert not torch.allclose(embeds(uint8["pixel_values"].float()), expected, atol=1e-3)


def test_uint8_eval_crop_is_one_call_within_one_level_of_the_processor(tmp_path):
    """The Trainer's uint8 eval batches resample the center crop's box in one PIL call: at most 1/255 from the
    processor's pixels, while the float eval path stays bit-identical to the processor."""
    from transformers import BitImageProcessor

    from mm_hf.data.images import load_image

    processor = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=3)
    rng = np.random.default_rng(1)
    paths = []
    for index, size in enumerate([(120, 90), (61, 97), (115, 77)]):  # too small to decode reduced
        path = tmp_path / f"p{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    floats = build_image_transform(processor, train=False)
    uint8 = build_image_transform(processor, train=False, uint8=True)
    assert floats.geometry.exact and not uint8.geometry.exact
    expected = torch.stack([processor(load_image(p), return_tensors="pt")["pixel_values"][0] for p in paths])
    assert torch.equal(torch.stack(floats({"image": paths})["pixel_values"]), expected)
    got = BatchPixelNormaliser(processor)(torch.stack(uint8({"image": paths})["pixel_values"]))
    levels = ((got - expected).abs() * torch.tensor(processor.image_std)[:, None, None] * 255).round()
    # 8 % of these pixel-noise values are one level off (0.0056 % of a photo's: README "Input pipeline speed").
    assert levels.max() == 1 and (levels > 0).float().mean() < 0.15


def test_train_transform_gives_uint8_and_other_processors_stay_float(tiny_clip, photos):
    from transformers import ViTImageProcessorPil

    image_processor = AutoProcessor.from_pretrained(tiny_clip).image_processor
    batch = _batch(build_image_transform(image_processor, train=True, uint8=True), photos)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 30, 30)

    class Custom(ViTImageProcessorPil):  # a step of its own: the byte table would not reproduce it
        def rescale(self, image, *args, **kwargs):
            return super().rescale(image, *args, **kwargs)

    batch = _batch(build_image_transform(Custom(size={"height": 16, "width": 16}), train=True, uint8=True), photos)
    assert batch["pixel_values"].dtype == torch.float32


def test_default_workers_follow_the_cores_per_process(monkeypatch):
    from mm_hf.args import default_num_workers

    monkeypatch.delenv("MM_HF_DATALOADER_WORKERS")
    cases = {(1, 1): 0, (2, 1): 0, (3, 1): 0, (4, 1): 3, (8, 1): 4, (64, 1): 4, (8, 2): 3, (4, 2): 0, (16, 4): 3}
    assert {case: default_num_workers(*case) for case in cases} == cases
    monkeypatch.setenv("MM_HF_DATALOADER_WORKERS", "2")
    assert default_num_workers(64, 1) == 2


def test_start_run_fills_workers_unless_set_and_refuses_persistent_workers(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    from mm_hf.args import FinetuneArguments
    from mm_hf.errors import UserError
    from mm_hf.run import start_run

    monkeypatch.delenv("MM_HF_DATALOADER_WORKERS")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    types, base = (FinetuneArguments, TrainingArguments), ["--output_dir", str(tmp_path / "a")]
    _, training_args = start_run(types, base)
    assert training_args.dataloader_num_workers == 4 and not training_args.dataloader_persistent_workers
    _, training_args = start_run(types, [*base, "--dataloader_num_workers", "0"])
    assert training_args.dataloader_num_workers == 0
    with pytest.raises(UserError, match="--dataloader_persistent_workers"):
        start_run(types, [*base, "--dataloader_num_workers", "2", "--dataloader_persistent_workers", "true"])


def test_prefetch_factor_alone_uses_the_default_workers(monkeypatch, tmp_path):
    """--dataloader_prefetch_factor needs workers: the CPU-count default counts (it reaches TrainingArguments' check),
    where the default is 0 the refusal names the flag to set, and an explicit 0 workers is never overridden."""
    from transformers import TrainingArguments

    from mm_hf.args import FinetuneArguments, dataloader_defaults
    from mm_hf.errors import UserError
    from mm_hf.run import start_run

    monkeypatch.delenv("MM_HF_DATALOADER_WORKERS")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert dataloader_defaults(cuda=False, cpus=8, processes=1) == {
        "dataloader_num_workers": 4, "dataloader_pin_memory": False
    }  # fmt: skip
    assert dataloader_defaults(cuda=True, cpus=2, processes=1) == {
        "dataloader_num_workers": 0, "dataloader_pin_memory": True
    }  # fmt: skip
    types, base = (FinetuneArguments, TrainingArguments), ["--output_dir", str(tmp_path / "a")]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    _, training_args = start_run(types, [*base, "--dataloader_prefetch_factor", "4"])
    assert (training_args.dataloader_num_workers, training_args.dataloader_prefetch_factor) == (4, 4)
    _, training_args = start_run(types, base)
    assert training_args.dataloader_prefetch_factor is None  # torch's 2 per worker
    with pytest.raises(UserError, match="--dataloader_num_workers"):
        start_run(types, [*base, "--dataloader_prefetch_factor", "4", "--dataloader_num_workers", "0"])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    with pytest.raises(UserError, match="--dataloader_num_workers"):
        start_run(types, [*base, "--dataloader_prefetch_factor", "4"])


def test_clip_imagecls_trainer_batches_arrive_as_uint8(tiny_vtde, digits_dir, tmp_path, monkeypatch):
    from conftest import load_recipe

    recipe = load_recipe("clip_imagecls")
    seen = []

    def recording(model, image_processor):  # registered first, so it sees what the DataLoader handed over
        model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((module.training, kwargs["pixel_values"].dtype)), with_kwargs=True
        )
        return attach_pixel_normaliser(model, image_processor)

    monkeypatch.setattr(transforms, "attach_pixel_normaliser", recording)  # called by classifier_image_transforms
    data = [f"--{split}_dir={digits_dir / split}" for split in ("train", "validation", "test")]
    results = recipe.main([
        "--model_name_or_path", str(tiny_vtde), "--output_dir", str(tmp_path / "out"), "--do_train", "--do_eval",
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--finetune_strategy", "full", *data,
    ])  # fmt: skip
    assert {dtype for _, dtype in seen} == {torch.uint8}
    assert {training for training, _ in seen} == {True, False}  # training and evaluation batches alike
    assert 0 <= results["eval_accuracy"] <= 1


def test_fusion_uint8_batches_give_the_float_paths_logits(tmp_path):
    """Images and video frames cross the DataLoader as uint8 and the fusion model, given `accept_uint8`, gives the
    float path's logits; a missing image or clip stays marked missing."""
    from mm_hf.data.video import VIDEO_FRAMES_KEY
    from mm_hf.models import build_fusion_classifier
    from mm_hf.models.tiny import build_tiny_encoders
    from mm_hf.processing import MultimodalProcessor, ProcessorSettings

    vision = build_tiny_encoders(str(tmp_path / "encoders"))["vision"]  # ViT: every image resized to 32x32
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(48, 40), (32, 32), (70, 45)]):
        path = tmp_path / f"img{index}.{'jpg' if index == 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    clips = [[Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(2)] for _ in range(3)]
    rows = {"image": [*paths, None], VIDEO_FRAMES_KEY: [clips[0], None, clips[1], clips[2]], "labels": [0, 1, 0, 1]}
    rows["video"] = rows[VIDEO_FRAMES_KEY]
    task = {"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}
    torch.manual_seed(0)
    model = build_fusion_classifier({"image": vision, "video": vision}, [task], hidden_size=16, num_frames=2).eval()
    processor = MultimodalProcessor.from_encoders(
        {"image": vision}, ProcessorSettings(["image", "video"], num_frames=2)
    )
    floats = {
        key: torch.stack(value) for key, value in processor.transform(train=False)(rows).items() if key != "labels"
    }
    dataset = datasets.Dataset.from_dict({"row": list(range(4))})

    def rows_of(batch):
        return processor.transform(train=False, uint8=True)({k: [v[i] for i in batch["row"]] for k, v in rows.items()})

    loader = DataLoader(dataset.with_transform(rows_of), batch_size=4, collate_fn=default_data_collator)
    uint8 = next(iter(loader))
    assert uint8["pixel_values"].dtype == uint8["pixel_values_videos"].dtype == torch.uint8
    assert uint8["pixel_values"].shape == floats["pixel_values"].shape == (4, 3, 32, 32)
    assert uint8["pixel_values_videos"].shape == floats["pixel_values_videos"].shape == (4, 2, 3, 32, 32)
    assert torch.equal(uint8["modality_mask"], floats["modality_mask"])
    assert uint8["modality_mask"].tolist() == [[1, 1], [1, 0], [1, 1], [0, 1]]
    with torch.no_grad():
        expected = model(**floats).logits
        raw = model(**{k: v.float() if v.dtype == torch.uint8 else v for k, v in uint8.items() if k != "labels"})
        assert not torch.allclose(raw.logits, expected, atol=1e-3)  # unnormalised bytes would change the logits
        assert processor.accept_uint8(model)
        got = model(**{k: v for k, v in uint8.items() if k != "labels"}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
