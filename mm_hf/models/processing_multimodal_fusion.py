"""`MultimodalFusionProcessor`: decoded inputs -> the inputs of `MultimodalFusionForClassification`.

Shipped with fusion checkpoints like the model's code (it imports only numpy, torch and transformers), so a
folder saved by the fusion recipes loads without mm_hf:

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    batch = processor(images=[pil_image, None], text=["a caption", "another"], tabular=[{"age": 31}, {"age": None}])
    logits = model(**batch).logits

It takes *decoded* inputs, one list entry per sample, None where a sample lacks that modality: `images` PIL
images (turned upright by their EXIF orientation and converted to RGB; flatten transparent ones yourself), `videos` lists of PIL frames (already sampled, `num_frames` of them: the recipes take the frames at the
centres of `num_frames` equal segments of the clip), `text` strings, `audio` float waveforms at the feature
extractor's sampling rate, `tabular` dicts of column -> raw value. A missing modality becomes a neutral stand-in
and a 0 in `modality_mask` (B, M), as in training. These are the evaluation-time steps of mm_hf's
`MultimodalProcessor`, which uses this class for them (mm_hf adds file decoding and training augmentation).

Saved layout: `processor_config.json` (settings, tabular statistics, `auto_map`) plus the sub-processors in
`image_processor/`, `tokenizer/` and `feature_extractor/`, each loadable on its own with plain transformers.
"""

import inspect
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import ImageOps
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer, BatchFeature
from transformers.utils import PROCESSOR_NAME

SUB_PROCESSORS = {"image_processor": AutoImageProcessor, "tokenizer": AutoTokenizer}
SUB_PROCESSORS["feature_extractor"] = AutoFeatureExtractor


@dataclass
class ProcessorSettings:
    """What the processor does beyond its parts: which modalities, in model order, and per-modality limits."""

    modalities: list[str] = field(default_factory=list)
    max_length: int = 128  # text tokens
    max_length_seconds: float = 10.0  # audio
    num_frames: int = 8  # video
    audio_from_video: bool = False  # the audio modality is the video file's own sound track


def height_width(size: Any) -> tuple[int, int]:
    """(height, width) from a `SizeDict`, a plain dict or an int."""
    if isinstance(size, int):
        return size, size

    def get(key: str) -> int | None:
        return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)

    for height_key, width_key in (("height", "width"), ("max_height", "max_width")):
        if get(height_key) and get(width_key):
            return int(get(height_key)), int(get(width_key))
    edge = get("shortest_edge") or get("longest_edge")
    if edge:
        return int(edge), int(edge)
    raise ValueError(f"Cannot tell the model's input size from the image processor's size {size!r}.")


def target_size(image_processor: Any) -> tuple[int, int]:
    """The (height, width) the model expects from `image_processor`: its crop size when it
    center-crops, otherwise its resize target (a `shortest_edge` becomes a square)."""
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size:
        return height_width(crop_size)
    return height_width(image_processor.size)


def category_key(value: Any) -> str | None:
    """A categorical cell as its text key (None when missing); 3.0 and 3 read the same (pandas floats int columns)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, np.generic):
        return category_key(value.item())
    return str(value)


def number(value: Any) -> float:
    """A numeric cell as a float, NaN when missing (None, NaN, blank text); ValueError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    result = float(value.strip() if isinstance(value, str) else value)
    if math.isinf(result):
        raise ValueError(f"infinite value {value!r}")
    return result


def encode_tabular(
    numeric: Sequence[np.ndarray],
    means: Sequence[float],
    stds: Sequence[float],
    categorical: Sequence[Sequence[str | None]],
    indexes: Sequence[Mapping[str, int]],
    size: int,
) -> dict[str, np.ndarray]:
    """Standardise each numeric column (float64 values, NaN kept) with the training mean/std, map each categorical
    column's keys to ids (0: missing, unseen or rare). -> float32 (B, n_numeric) and int64 (B, n_categorical)."""
    values = np.empty((size, len(numeric)), dtype=np.float32)
    for j, column in enumerate(numeric):
        values[:, j] = (column - means[j]) / stds[j]
    ids = np.empty((size, len(categorical)), dtype=np.int64)
    for j, keys in enumerate(categorical):
        ids[:, j] = np.fromiter((indexes[j].get(k, 0) for k in keys), np.int64, size)
    return {"numeric_values": values, "categorical_ids": ids}


def text_inputs(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenized to `max_length` (never beyond the tokenizer's own limit): input_ids, attention_mask[, token_type_ids]."""
    max_length = min(max_length, tokenizer.model_max_length)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}


def audio_window(feature_extractor: Any, max_length_seconds: float | None) -> int | None:
    """Samples an evaluation clip is cut to: `max_length_seconds`, and never more than the extractor's own window
    (CLAP's extractor would otherwise crop longer clips at a random place, even in evaluation)."""
    rate = int(feature_extractor.sampling_rate)
    samples = int(round(max_length_seconds * rate)) if max_length_seconds else None
    window = getattr(feature_extractor, "nb_max_samples", None)
    return min(samples or window, int(window)) if window else samples


def audio_features(feature_extractor: Any, clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Already cut clips -> {input name: (B, ...), "attention_mask": (B, ...) where the extractor makes one}.

    The mask is asked for whenever the extractor can make one (pooling needs it to skip padded frames); padding is
    to the longest clip, or to the extractor's fixed length for those that need it (Whisper's 30 s)."""
    accepted = inspect.signature(feature_extractor.__call__).parameters
    kwargs = {"return_attention_mask": True} if "return_attention_mask" in accepted else {}
    padding = "max_length" if getattr(feature_extractor, "n_samples", None) else True
    rate = int(feature_extractor.sampling_rate)
    features = feature_extractor(clips, sampling_rate=rate, return_tensors="pt", padding=padding, **kwargs)
    name = feature_extractor.model_input_names[0]
    return {key: features[key] for key in (name, "attention_mask") if key in features}


class MultimodalFusionProcessor:
    """Image processor + tokenizer + audio feature extractor + tabular statistics, as one batch call."""

    def __init__(
        self,
        settings: ProcessorSettings,
        image_processor: Any = None,
        tokenizer: Any = None,
        feature_extractor: Any = None,
        tabular: Mapping | None = None,
    ):
        self.settings = settings
        self.image_processor, self.tokenizer, self.feature_extractor = image_processor, tokenizer, feature_extractor
        self.tabular = dict(tabular) if tabular is not None else None  # TabularProcessor.to_dict(): plain JSON
        needs = {"image": image_processor, "video": image_processor, "text": tokenizer, "audio": feature_extractor}
        needs["tabular"] = tabular
        missing = [m for m in settings.modalities if needs.get(m) is None]
        if missing:
            raise ValueError(f"no processor for modality(ies) {missing}")
        if tabular is not None:
            self.numeric = [c["name"] for c in tabular.get("numeric", [])]
            self.means = [float(c["mean"]) for c in tabular.get("numeric", [])]
            self.stds = [float(c["std"]) for c in tabular.get("numeric", [])]
            self.categorical = [c["name"] for c in tabular.get("categorical", [])]
            vocabularies = [[str(v) for v in c["vocabulary"]] for c in tabular.get("categorical", [])]
            self.indexes = [{value: i + 1 for i, value in enumerate(vocab)} for vocab in vocabularies]

    # --- the call ------------------------------------------------------------------------------------------

    def __call__(
        self,
        images: list | None = None,
        text: list | None = None,
        audio: list | None = None,
        videos: list | None = None,
        tabular: list | None = None,
        return_tensors: str | None = "pt",
        **unused: Any,
    ) -> BatchFeature:
        """One list per modality (None entries, or a whole None list, for what is missing) -> stacked tensors."""
        if return_tensors not in ("pt", None):
            raise ValueError(f"this processor returns PyTorch tensors (return_tensors='pt'); got {return_tensors!r}")
        given = {"image": images, "text": text, "audio": audio, "video": videos, "tabular": tabular}
        unknown = [m for m, values in given.items() if values is not None and m not in self.settings.modalities]
        if unknown or unused:
            raise ValueError(
                f"this processor takes {self.settings.modalities}; got {unknown + sorted(unused)} it has no use for"
            )
        sizes = {len(values) for values in given.values() if values is not None}
        if len(sizes) != 1:
            raise ValueError(f"give one list per modality, all of the same length; got lengths {sorted(sizes)}")
        size = sizes.pop()
        per_modality = {m: given[m] if given[m] is not None else [None] * size for m in self.settings.modalities}
        columns, present = {}, []
        for modality, values in per_modality.items():
            inputs, available = getattr(self, f"{modality}_inputs")(values)
            columns.update(inputs)
            present.append(available)
        columns["modality_mask"] = torch.tensor(np.asarray(present, dtype=np.int64).T)
        return BatchFeature({key: torch.stack(list(value)) for key, value in columns.items()})

    # Each <modality>_inputs(values) returns (model inputs, one tensor or row per sample; per-sample availability).
    def image_inputs(self, images: list) -> tuple[dict, list[bool]]:
        blank = self.blank_image()

        def pixels(real: list) -> list:
            # Upright RGB as mm_hf decodes files (which also composites transparent images on white).
            upright = [ImageOps.exif_transpose(image).convert("RGB") for image in real]
            out = self.image_processor(upright, return_tensors="np")
            return [torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in out["pixel_values"]]

        return {"pixel_values": fill(images, pixels, blank)}, [image is not None for image in images]

    def video_inputs(self, videos: list) -> tuple[dict, list[bool]]:
        def clips(real: list) -> list:
            out = []
            for frames in real:
                pixels = self.image_processor(list(frames), return_tensors="np")["pixel_values"]
                out.append(torch.from_numpy(np.asarray(pixels, dtype=np.float32)))
            return out

        blank = self.blank_image().expand(self.settings.num_frames, -1, -1, -1).contiguous()
        return {"pixel_values_videos": fill(videos, clips, blank)}, [video is not None for video in videos]

    def text_inputs(self, texts: list) -> tuple[dict, list[bool]]:
        strings = [str(t) if t is not None else "" for t in texts]
        inputs = text_inputs(self.tokenizer, strings, self.settings.max_length)
        return {key: list(value) for key, value in inputs.items()}, [t is not None for t in texts]

    def audio_inputs(self, clips: list) -> tuple[dict, list[bool]]:
        """Float waveforms at the extractor's rate, cut to the first `max_length_seconds` (the evaluation window)."""
        window = audio_window(self.feature_extractor, self.settings.max_length_seconds)
        cut = [np.asarray(c, dtype=np.float32)[..., :window] if c is not None else None for c in clips]
        return self.audio_features(cut)

    def audio_features(self, clips: list) -> tuple[dict, list[bool]]:
        """Already cut clips (None where missing) -> features, the mask renamed `audio_attention_mask`."""
        # A tenth of a second of silence keeps the batch stackable; modality_mask tells the model it is missing.
        silence = np.zeros(int(self.feature_extractor.sampling_rate) // 10, dtype=np.float32)
        features = audio_features(self.feature_extractor, [c if c is not None else silence for c in clips])
        renamed = {("audio_attention_mask" if k == "attention_mask" else k): list(v) for k, v in features.items()}
        return renamed, [c is not None for c in clips]

    def tabular_inputs(self, rows: list) -> tuple[dict, list[bool]]:
        """Dicts of column -> raw value; a column or a whole row left out counts as missing values (NaN, id 0)."""
        rows = [row or {} for row in rows]
        numeric = []
        for column in self.numeric:
            try:
                numeric.append(np.array([number(row.get(column)) for row in rows], dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise ValueError(f"tabular column {column!r}: not a number ({error})") from None
        categorical = [[category_key(row.get(column)) for row in rows] for column in self.categorical]
        arrays = encode_tabular(numeric, self.means, self.stds, categorical, self.indexes, len(rows))
        inputs = {key: [torch.from_numpy(row) for row in value] for key, value in arrays.items()}
        # Tabular rows are never missing as a whole in training (missing cells are NaN / id 0), so neither here.
        return inputs, [True] * len(rows)

    def blank_image(self) -> torch.Tensor:
        height, width = target_size(self.image_processor)
        return torch.zeros(3, height, width)

    # --- saving and loading --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "tabular": self.tabular,
            "auto_map": {"AutoProcessor": f"{__name__.rpartition('.')[2]}.{type(self).__name__}"},
        }

    def save_pretrained(self, save_directory: str, **unused: Any) -> list[str]:
        """processor_config.json, the sub-processors' folders and this file (the code AutoProcessor runs)."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        shutil.copy(__file__, os.path.join(save_directory, os.path.basename(__file__)))
        for name in SUB_PROCESSORS:
            part = getattr(self, name)
            if part is not None:
                part.save_pretrained(os.path.join(save_directory, name))
        return [path]

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs: Any) -> "MultimodalFusionProcessor":
        """From a saved folder (AutoProcessor passes its own keyword arguments through; they are not needed)."""
        with open(os.path.join(directory, PROCESSOR_NAME), encoding="utf-8") as f:
            saved = json.load(f)
        parts = {
            name: loader.from_pretrained(os.path.join(directory, name))
            for name, loader in SUB_PROCESSORS.items()
            if os.path.isdir(os.path.join(directory, name))
        }
        return cls(ProcessorSettings(**saved["settings"]), tabular=saved.get("tabular"), **parts)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """AutoProcessor calls this on remote-code classes; `to_dict` always writes the `auto_map` entry."""


def fill(sources: list, process, blank: torch.Tensor) -> list:
    """`process` on the present sources, `blank` where a source is None, in the original order."""
    real = [s for s in sources if s is not None]
    processed = iter(process(real) if real else [])
    return [next(processed) if s is not None else blank for s in sources]
