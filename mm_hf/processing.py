"""`MultimodalProcessor`: the per-modality processors of a fusion model in one object, saved next to the model.

It turns rows of `mm_hf.data.multimodal.load_multimodal_splits` (image / video / text / audio sources that may be
None, raw tabular values, labels) into the inputs of `MultimodalFusionForClassification`, including
`modality_mask` (B, M) that marks what each sample lacks. Saved layout (each part loadable on its own with
plain transformers, e.g. `AutoTokenizer.from_pretrained(repo, subfolder="tokenizer")`):

    processor_config.json       settings + tabular statistics + auto_map, for AutoProcessor (trust_remote_code)
    processing_multimodal_fusion.py   the code AutoProcessor runs (mm_hf.models.processing_multimodal_fusion)
    multimodal_processor.json   modalities, text/audio/video settings (read by `from_pretrained` here)
    image_processor/            AutoImageProcessor (images and video frames)
    tokenizer/                  AutoTokenizer
    feature_extractor/          AutoFeatureExtractor (audio)
    tabular_processor.json      TabularProcessor (train-split statistics)

The evaluation-time numeric steps (tokenizing, audio features, tabular encoding, stand-ins for missing inputs,
video frames) are `MultimodalFusionProcessor`'s, the class shipped with the checkpoint, so a checkpoint loaded
with plain transformers gets the inputs this class gives in evaluation. Images take a faster path here (reduced
JPEG decoding, table-lookup normalisation) that gives the image processor's own pixels for a decoded image.
"""

import json
import os
import random
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

from .data.audio import augment as augment_audio
from .data.audio import crop_or_pad, load_audio
from .data.tabular import TabularProcessor
from .data.transforms import attach_pixel_normaliser, build_image_transform
from .data.video.dataset import VIDEO_FRAMES_KEY, load_video_audio
from .data.video.frames import load_video_frames
from .models.processing_multimodal_fusion import MultimodalFusionProcessor, ProcessorSettings, audio_window, fill
from .models.text_length import text_max_length

CONFIG_NAME = "multimodal_processor.json"


class MultimodalProcessor:
    """Image processor + tokenizer + audio feature extractor + tabular processor, as one batch transform."""

    def __init__(
        self,
        settings: ProcessorSettings,
        image_processor=None,
        tokenizer=None,
        feature_extractor=None,
        tabular: TabularProcessor | None = None,
    ):
        self.settings = settings
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.feature_extractor, self.tabular = feature_extractor, tabular
        _ = self.fusion  # built once here to check that every modality has its processor

    @property
    def fusion(self) -> MultimodalFusionProcessor:
        """The evaluation steps, and what AutoProcessor loads from the saved folder; built when asked for, as the
        tabular statistics are fitted after this processor is made."""
        tabular = self.tabular.to_dict() if self.tabular is not None else None
        return MultimodalFusionProcessor(
            self.settings, self.image_processor, self.tokenizer, self.feature_extractor, tabular
        )

    @classmethod
    def from_encoders(cls, encoders: dict[str, str | None], settings: ProcessorSettings, tabular=None, **kwargs):
        """Load each modality's processor from its encoder's Hub id or path (`encoders` as for the model)."""
        visual = encoders.get("image") or encoders.get("video")
        tokenizer = AutoTokenizer.from_pretrained(encoders["text"], **kwargs) if encoders.get("text") else None
        if tokenizer is not None:
            # Never beyond what the text encoder has positions for (saved so a reload tokenizes the same way).
            config = AutoConfig.from_pretrained(encoders["text"], **kwargs)
            settings.max_length = text_max_length(tokenizer, config, settings.max_length)
        return cls(
            settings,
            image_processor=AutoImageProcessor.from_pretrained(visual, **kwargs) if visual else None,
            tokenizer=tokenizer,
            feature_extractor=(
                AutoFeatureExtractor.from_pretrained(encoders["audio"], **kwargs) if encoders.get("audio") else None
            ),
            tabular=tabular,
        )

    def transform(self, train: bool, augment: bool = True, uint8: bool = False) -> "MultimodalTransform":
        """The `Dataset.with_transform` callable: random crops/windows when `train` (and `augment`). `uint8`: images
        and video frames as uint8 pixels, for a model given `accept_uint8` (the Trainer's batches)."""
        return MultimodalTransform(self, train=train, augment=augment and train, uint8=uint8)

    def accept_uint8(self, model) -> bool:
        """Let `model` take the uint8 pixels of `transform(..., uint8=True)` (`attach_pixel_normaliser`: normalised
        on the batch, on the model's device); False when there are no pixels to send as uint8."""
        if self.image_processor is None:
            return False
        attach_pixel_normaliser(model, self.image_processor)
        return True

    def save_pretrained(self, save_directory: str) -> None:
        self.fusion.save_pretrained(save_directory)  # processor_config.json, its code file and the sub-processors
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(asdict(self.settings), f, indent=2, sort_keys=True)
        if self.tabular is not None:
            self.tabular.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, directory: str, **hub_kwargs) -> "MultimodalProcessor":
        """Load from a saved folder, or a Hub repo id (downloaded with `huggingface_hub.snapshot_download`)."""
        if not os.path.isdir(directory):
            from huggingface_hub import snapshot_download

            directory = snapshot_download(directory, **hub_kwargs)

        with open(os.path.join(directory, CONFIG_NAME)) as f:
            settings = ProcessorSettings(**json.load(f))
        loaders = {"image_processor": AutoImageProcessor, "tokenizer": AutoTokenizer}
        loaders["feature_extractor"] = AutoFeatureExtractor
        parts = {
            name: loader.from_pretrained(os.path.join(directory, name))
            for name, loader in loaders.items()
            if os.path.isdir(os.path.join(directory, name))
        }
        tabular = None
        if os.path.exists(os.path.join(directory, "tabular_processor.json")):
            tabular = TabularProcessor.from_pretrained(directory)
        return cls(settings, tabular=tabular, **parts)


class MultimodalTransform:
    """Batch transform (a class, so datasets carrying it pickle into DataLoader workers).

    Output per example: `modality_mask` (M,) plus the inputs of every modality in the processor's order; a
    missing modality gets a neutral stand-in (zeros, an empty text, silence) so the batch stacks, and a 0 in
    `modality_mask`, so the model swaps in its learned placeholder. `labels*` columns pass through. A batch with
    `VIDEO_FRAMES_KEY` (already decoded frames per clip, e.g. corrupted by mm_hf.corruptions) uses them instead of
    decoding the video column; a sound track is still read from the video column.

    With `uint8`, `pixel_values` (B, 3, H, W) and `pixel_values_videos` (B, T, 3, H, W) are uint8 pixels (for the
    stock PIL image processors, which `build_image_transform` mirrors; others stay float): 4x fewer bytes from the
    DataLoader's workers, rescaled and normalised by the model (`MultimodalProcessor.accept_uint8`). Missing ones
    are zeros either way: the model swaps in its placeholder.
    """

    def __init__(self, processor: MultimodalProcessor, *, train: bool, augment: bool, uint8: bool = False):
        self.processor, self.train, self.augment = processor, train, augment
        self.fusion = processor.fusion
        self.modalities = processor.settings.modalities
        if processor.image_processor is not None:
            self.images = build_image_transform(processor.image_processor, train=augment, hflip=False, uint8=uint8)
        if "video" in self.modalities:
            # Decoded frames take the processor's eval resize + crop (no augmentation), as `video_inputs` does.
            self.frames = build_image_transform(processor.image_processor, train=False, load=_decoded, uint8=uint8)
        if processor.feature_extractor is not None:
            self.audio_window = audio_window(processor.feature_extractor, processor.settings.max_length_seconds)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        size = len(next(iter(batch.values())))
        out = {key: values for key, values in batch.items() if key.startswith("labels")}
        present = []
        for modality in self.modalities:
            if modality == "tabular":
                arrays = self.processor.tabular(batch)
                out["numeric_values"] = [torch.from_numpy(row) for row in arrays["numeric_values"]]
                out["categorical_ids"] = [torch.from_numpy(row) for row in arrays["categorical_ids"]]
                present.append([True] * size)
                continue
            inputs, available = getattr(self, f"_{modality}")(self._sources(batch, modality))
            out.update(inputs)
            present.append(available)
        mask = np.asarray(present, dtype=np.int64).T  # (B, M)
        out["modality_mask"] = [torch.from_numpy(row) for row in mask]
        return out

    def _sources(self, batch: dict[str, list], modality: str) -> list:
        if modality == "audio" and self.processor.settings.audio_from_video:
            return list(batch["video"])
        if modality == "video" and VIDEO_FRAMES_KEY in batch:
            return list(batch[VIDEO_FRAMES_KEY])
        return list(batch[modality])

    # Each _<modality>(sources) decodes the sources and returns (model inputs, per-sample availability).
    def _image(self, sources: list) -> tuple[dict, list[bool]]:
        blank = self._blank(self.images.uint8)
        pixels = fill(sources, lambda real: self.images({"image": real})["pixel_values"], blank)
        return {"pixel_values": pixels}, [s is not None for s in sources]

    def _blank(self, uint8: bool) -> torch.Tensor:
        blank = self.fusion.blank_image()
        return blank.to(torch.uint8) if uint8 else blank

    def _video(self, sources: list) -> tuple[dict, list[bool]]:
        num_frames = self.processor.settings.num_frames
        clips = [
            # A list of frames is already decoded (VIDEO_FRAMES_KEY); a file, bytes or record is decoded here.
            s if s is None or isinstance(s, list) else load_video_frames(s, num_frames, train=self.train, rng=random)
            for s in sources
        ]
        if not self.frames.uint8:
            return self.fusion.video_inputs(clips)

        def pixels(real: list) -> list:
            return [torch.stack(self.frames({"image": frames})["pixel_values"]) for frames in real]

        blank = self._blank(uint8=True).expand(num_frames, -1, -1, -1).contiguous()
        return {"pixel_values_videos": fill(clips, pixels, blank)}, [clip is not None for clip in clips]

    def _text(self, sources: list) -> tuple[dict, list[bool]]:
        return self.fusion.text_inputs(sources)

    def _audio(self, sources: list) -> tuple[dict, list[bool]]:
        rate = int(self.processor.feature_extractor.sampling_rate)
        from_video = self.processor.settings.audio_from_video
        clips = []
        for source in sources:
            clip = None
            if source is not None:  # a video without a sound track has no audio either
                clip = load_video_audio(source, rate) if from_video else load_audio(source, rate)
            if clip is not None and self.audio_window:
                clip = crop_or_pad(clip, self.audio_window, train=self.train)  # evaluation: the first window
            if clip is not None and self.augment:
                clip = augment_audio(clip)
            clips.append(clip)
        return self.fusion.audio_features(clips)


def _decoded(frame):
    """The `load` of video frames, already decoded PIL images (a module-level function, so it pickles)."""
    return frame
