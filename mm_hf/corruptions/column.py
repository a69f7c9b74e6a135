"""`CorruptColumn`: a corruption applied to one column of a dataset's batch before the normal transform, inside the
DataLoader workers.

Video clips take the image corruptions frame by frame: `CorruptColumn(modality="video")` decodes the clip's frames as
evaluation does (`load_video_frames`, the processor's `num_frames`), corrupts each, and hands the decoded frames to
the transform (under `VIDEO_FRAMES_KEY`), so the file itself is never re-encoded (its codec would add artefacts of
its own). Every frame of a clip gets the same draws (one generator per frame, made from the same (seed, clip)): a
camera tilted by `rotation` or blurred by `motion_blur` stays so for the whole clip, and noise is a fixed pattern
rather than fresh per frame, which frame averaging would otherwise partly cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.audio import load_audio
from ..data.images import load_image
from ..data.video.dataset import VIDEO_FRAMES_KEY
from ..data.video.frames import load_video_frames
from .registry import CORRUPTIONS, check_corruption, content_key, corruption_rng, corruptions_of


class CorruptColumn:
    """A batch transform wrapper for `Dataset.with_transform`: corrupt one column, then run the normal `transform`.

    Each value of `column` (default: the modality's name, the fusion/classification recipes' column) is decoded
    (`load_image` / `load_audio` at `sampling_rate` / `str`), corrupted with `CORRUPTIONS[modality][corruption]` at
    `severity`, and handed to `transform` as a PIL image / an `{"array", "sampling_rate"}` record / a string, which
    the recipes' transforms accept as they accept the original sources. A missing value (None: a missing modality)
    stays missing. Audio needs `sampling_rate`, the feature extractor's, so the clip is decoded once at that rate.

    A video column (`modality="video"`, an image corruption) is decoded to `num_frames` evaluation frames
    (`load_video_frames`, as `MultimodalTransform` would), every frame corrupted with the clip's draws, and the frame
    lists handed over under `VIDEO_FRAMES_KEY` (None where the clip is missing); the column itself is kept, as a
    sound track may still be read from the file.

    Randomness: with `index_column` (an int column, e.g. added by `dataset.add_column("sample_index", range(n))`,
    removed before `transform` sees the batch) a sample's draws depend on (seed, index); without, on (seed, the
    sample's content). Either way the result is the same in any DataLoader worker and order. A class, not a
    closure, so datasets carrying it pickle into DataLoader workers.
    """

    def __init__(
        self,
        transform: Callable[[dict], dict],
        *,
        modality: str,
        corruption: str,
        severity: int,
        column: str | None = None,
        seed: int = 0,
        index_column: str | None = None,
        sampling_rate: int | None = None,
        num_frames: int | None = None,
    ):
        check_corruption(modality, corruption, severity)
        if modality == "audio" and not sampling_rate:
            raise ValueError("audio corruptions need sampling_rate (the feature extractor's) to decode the clips")
        if modality == "video" and not num_frames:
            raise ValueError("video corruptions need num_frames (the processor's) to decode the clips' frames")
        self.transform = transform
        self.modality, self.corruption, self.severity = modality, corruption, severity
        self.column = column or modality
        self.seed, self.index_column, self.sampling_rate = seed, index_column, sampling_rate
        self.num_frames = num_frames

    def __call__(self, batch: dict[str, list]) -> dict:
        batch = dict(batch)
        if self.column not in batch:
            raise KeyError(
                f"No {self.modality} column {self.column!r} to corrupt in the batch; columns are {list(batch)}"
            )
        if self.index_column is not None:
            if self.index_column not in batch:
                raise KeyError(f"No index column {self.index_column!r} in the batch; columns are {list(batch)}")
            keys = [int(index) for index in batch.pop(self.index_column)]
        else:
            keys = [None] * len(batch[self.column])
        corrupted = [self.corrupt(value, key) for value, key in zip(batch[self.column], keys, strict=True)]
        batch[VIDEO_FRAMES_KEY if self.modality == "video" else self.column] = corrupted
        return self.transform(batch)

    def corrupt(self, value: Any, key: int | None = None) -> Any:
        """One corrupted sample from a raw column value (key: the sample index; None: use its content); for a video,
        its list of corrupted frames."""
        if value is None:
            return None
        if isinstance(value, list | tuple) and self.modality == "text":  # several captions per sample
            return [self.corrupt(text, key) for text in value] if key is None else self._texts(value, key)
        function = corruptions_of(self.modality)[self.corruption]
        if self.modality == "video":
            frames = load_video_frames(value, int(self.num_frames))
            key = content_key(np.stack([np.asarray(f) for f in frames])) if key is None else key
            # A fresh generator per frame: every frame gets the clip's draws (see the module docstring).
            return [function(frame, self.severity, corruption_rng(self.seed, key, self.corruption)) for frame in frames]
        if self.modality == "image":
            sample = load_image(value)
        elif self.modality == "audio":
            sample = load_audio(value, int(self.sampling_rate))
        else:
            sample = str(value)
        rng = corruption_rng(self.seed, content_key(sample) if key is None else key, self.corruption)
        if self.modality == "audio":
            return {
                "array": function(sample, self.severity, rng, sampling_rate=self.sampling_rate),
                "sampling_rate": self.sampling_rate,
            }
        return function(sample, self.severity, rng)

    def _texts(self, texts, key: int) -> list[str]:
        # One generator for the whole list, so the captions of one sample get different typos.
        rng = corruption_rng(self.seed, key, self.corruption)
        return [CORRUPTIONS["text"][self.corruption](str(text), self.severity, rng) for text in texts]
