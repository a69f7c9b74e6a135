"""`MultimodalProcessor`: the per-modality processors of a fusion model in one object, saved next to the model.

It turns rows of `mm_hf.data.multimodal.load_multimodal_splits` (image / video / text / audio sources that may be
None, raw tabular values, labels) into the inputs of `MultimodalFusionForClassification`, including
`modality_mask` (B, M) that marks what each sample lacks. Saved layout (each part loadable on its own with
plain transformers, e.g. `AutoTokenizer.from_pretrained(repo, subfolder="tokenizer")`):

    multimodal_processor.json   modalities, text/audio/video settings
    image_processor/            AutoImageProcessor (images and video frames)
    tokenizer/                  AutoTokenizer
    feature_extractor/          AutoFeatureExtractor (audio)
    tabular_processor.json      TabularProcessor (train-split statistics)
"""

import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data.audio import AudioTransform, load_audio
from .data.tabular import TabularProcessor
from .data.transforms import build_image_transform, target_size
from .data.video import load_video_audio, load_video_frames

CONFIG_NAME = "multimodal_processor.json"


@dataclass
class ProcessorSettings:
    """What the processor does beyond its parts: which modalities, in model order, and per-modality limits."""

    modalities: list[str] = field(default_factory=list)
    max_length: int = 128  # text tokens
    max_length_seconds: float = 10.0  # audio
    num_frames: int = 8  # video
    audio_from_video: bool = False  # the audio modality is the video file's own sound track


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
        needs = {"image": image_processor, "video": image_processor, "text": tokenizer, "audio": feature_extractor}
        needs["tabular"] = tabular
        missing = [m for m in settings.modalities if needs.get(m) is None]
        if missing:
            raise ValueError(f"no processor for modality(ies) {missing}")

    @classmethod
    def from_encoders(cls, encoders: dict[str, str | None], settings: ProcessorSettings, tabular=None, **kwargs):
        """Load each modality's processor from its encoder's Hub id or path (`encoders` as for the model)."""
        from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

        # Here, not at the top: importing mm_hf.models builds and registers every mm-hf model class; this module
        # stays light to import (it imports transformers only where used, too).
        from .models.text_length import text_max_length

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

    def transform(self, train: bool, augment: bool = True) -> "MultimodalTransform":
        """The `Dataset.with_transform` callable: random crops/windows when `train` (and `augment`)."""
        return MultimodalTransform(self, train=train, augment=augment and train)

    def save_pretrained(self, save_directory: str) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(asdict(self.settings), f, indent=2, sort_keys=True)
        for name in ("image_processor", "tokenizer", "feature_extractor"):
            part = getattr(self, name)
            if part is not None:
                part.save_pretrained(os.path.join(save_directory, name))
        if self.tabular is not None:
            self.tabular.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, directory: str, **hub_kwargs) -> "MultimodalProcessor":
        """Load from a saved folder, or a Hub repo id (downloaded with `huggingface_hub.snapshot_download`)."""
        from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

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
    `modality_mask`, so the model swaps in its learned placeholder. `labels*` columns pass through.
    """

    def __init__(self, processor: MultimodalProcessor, *, train: bool, augment: bool):
        self.processor, self.train = processor, train
        self.modalities = processor.settings.modalities
        if processor.image_processor is not None:
            self.images = build_image_transform(processor.image_processor, train=augment, hflip=False)
            self.frame_size = target_size(processor.image_processor)
        if processor.feature_extractor is not None:
            self.audio = AudioTransform(
                processor.feature_extractor,
                max_length_seconds=processor.settings.max_length_seconds,
                train=train,
                augment=augment,
            )

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
        return list(batch[modality])

    # Each _<modality>(sources) returns (model inputs, per-sample availability).
    def _image(self, sources: list) -> tuple[dict, list[bool]]:
        pixels = self._fill(sources, lambda real: self.images({"image": real})["pixel_values"], self._blank_image())
        return {"pixel_values": pixels}, [s is not None for s in sources]

    def _video(self, sources: list) -> tuple[dict, list[bool]]:
        settings, image_processor = self.processor.settings, self.processor.image_processor

        def frames(real: list) -> list:
            clips = []
            for source in real:
                images = load_video_frames(source, settings.num_frames, train=self.train, rng=random)
                pixels = image_processor(images, return_tensors="np")["pixel_values"]
                clips.append(torch.from_numpy(np.asarray(pixels, dtype=np.float32)))
            return clips

        blank = self._blank_image().expand(settings.num_frames, -1, -1, -1).contiguous()
        return {"pixel_values_videos": self._fill(sources, frames, blank)}, [s is not None for s in sources]

    def _text(self, sources: list) -> tuple[dict, list[bool]]:
        texts = [str(text) if text is not None else "" for text in sources]
        tokenizer = self.processor.tokenizer
        # `from_encoders` capped the setting at the text encoder's positions (with a warning); this keeps
        # processors built by hand within the tokenizer's own limit.
        max_length = min(self.processor.settings.max_length, tokenizer.model_max_length)
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return {key: list(enc[key]) for key in keys}, [s is not None for s in sources]

    def _audio(self, sources: list) -> tuple[dict, list[bool]]:
        rate = self.audio.sampling_rate
        from_video = self.processor.settings.audio_from_video
        clips = []
        for source in sources:
            clip = None
            if source is not None:  # a video without a sound track has no audio either
                clip = load_video_audio(source, rate) if from_video else load_audio(source, rate)
            clips.append(clip)
        # A tenth of a second of silence keeps the batch stackable; modality_mask tells the model it is missing.
        silence = np.zeros(rate // 10, dtype=np.float32)
        features = self.audio.features([clip if clip is not None else silence for clip in clips])
        # The text's attention_mask keeps its name; the audio one is renamed.
        renamed = {("audio_attention_mask" if key == "attention_mask" else key): v for key, v in features.items()}
        return renamed, [clip is not None for clip in clips]

    def _blank_image(self) -> torch.Tensor:
        height, width = self.frame_size
        return torch.zeros(3, height, width)

    @staticmethod
    def _fill(sources: list, process, blank: torch.Tensor) -> list:
        """`process` on the present sources, `blank` where a source is None, in the original order."""
        real = [s for s in sources if s is not None]
        processed = iter(process(real) if real else [])
        return [next(processed) if s is not None else blank for s in sources]
