"""The dual encoder behind an index: embeds items and queries with `mm_hf.retrieval`'s code, and fingerprints
the model and processor so an index never answers a query embedded by another model.

The model fingerprint hashes the config and every parameter: a fine-tune that changed only a LoRA-merged
tower (projections untouched) still embeds differently, so hashing the projections alone would miss it.
The processor fingerprint hashes the files `save_pretrained` writes (resize/normalisation, vocabulary).
"""

import hashlib
import json
import os
import tempfile

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from ..data.collate import Collate
from ..errors import DataError, UserError
from ..feature_cache import progress
from ..models import ContrastiveDualEncoderModel
from ..models.text_length import text_max_length
from ..retrieval import build_media, embed_media, embed_texts, load_dual_encoder, resolve_modality
from ..run_folder import refuse_unfinished

# How an item is embedded: its media (image/clip), its caption, or both (mean of the two unit vectors).
EMBED_CHOICES = ("media", "caption", "both")
QUERY_KINDS = ("text", "image", "audio")
_NOT_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures")


def model_fingerprint(model) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_CONFIG}
    digest = hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def processor_fingerprint(processor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            if name.endswith(".json"):  # drop the fields that name where it was loaded from / the library version
                data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
            digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("_name_or_path", "name_or_path", "processor_class")}
    return value


class Embedder:
    """A dual encoder + processor loaded from `model_path`, embedding items and queries (float32 numpy rows)."""

    def __init__(
        self,
        model_path: str,
        *,
        max_seq_length: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        device: str | None = None,
    ):
        refuse_unfinished(model_path, "index")
        try:
            model, processor, _ = load_dual_encoder(model_path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a dual encoder from {model_path}: {e}") from e
        if not (hasattr(model, "get_text_features") and hasattr(processor, "tokenizer")):
            raise UserError(
                f"{model_path} holds a {type(model).__name__}, not a dual encoder with a text tower (CLIP, SigLIP, "
                "CLAP, VisionTextDualEncoder, e.g. the output of recipes/clip_retrieval.py)"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # The contrastive wrapper's get_*_features return the embedding tensors whatever the backbone's output type
        # (transformers v5 returns a ModelOutput): the same calls the retrieval evaluation makes.
        self.model = ContrastiveDualEncoderModel.from_backbone(model).to(device).eval()
        self.path, self.processor, self.tokenizer = model_path, processor, processor.tokenizer
        self.modality = resolve_modality("auto", model.config)  # image, or audio for CLAP
        self.media = build_media(self.modality, processor, "media")
        self.max_length = text_max_length(self.tokenizer, model.config, max_seq_length)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.model_fingerprint = model_fingerprint(model)
        self.processor_fingerprint = processor_fingerprint(processor)

    def describe(self) -> dict:
        """The manifest's record of this model."""
        return {
            "model": os.path.abspath(self.path) if os.path.isdir(self.path) else self.path,
            "model_class": type(self.model.backbone).__name__,
            "model_fingerprint": self.model_fingerprint,
            "processor_fingerprint": self.processor_fingerprint,
            "modality": self.modality,
            "max_seq_length": self.max_length,
        }

    def check_matches(self, manifest: dict, index_dir: str) -> None:
        """Refuse a model or processor other than the one that built the index."""
        for key, what in (("model_fingerprint", "model"), ("processor_fingerprint", "processor")):
            if manifest[key] != getattr(self, key):
                raise UserError(
                    f"the {what} of {self.path} is not the one {index_dir} was built with ({manifest['model']}, "
                    f"{what} fingerprint {manifest[key]}, here {getattr(self, key)}): its embeddings would not be "
                    "comparable; query with that model or rebuild the index"
                )

    def embed_media(self, paths: list) -> torch.Tensor:
        data = Dataset.from_dict({"media": list(paths)})
        return embed_media(self.model, data, self.media, self.batch_size, self.num_workers)

    def embed_texts(self, texts: list[str], desc: str | None = None) -> torch.Tensor:
        return embed_texts(self.model, self.tokenizer, list(texts), self.batch_size, self.max_length, desc=desc)

    @torch.no_grad()
    def embed_readable_media(self, paths: list, desc: str | None = None) -> tuple[torch.Tensor, list[int], list]:
        """(embeddings of the files that decode, their indices in `paths`, [(file, reason)] of the others).

        Each file is decoded once: the embedding pass is the check (a batch that fails is retried row by row to
        find the bad file, `Collate`). Checking first and embedding after decoded each file twice: building an index
        of 300 256-px JPEGs with a tiny CLIP took 1.7x as long (median 0.82 s vs 0.48 s, one CPU thread). The vectors
        are `mm_hf.retrieval.embed_media`'s: the same eval transform and tower calls. `desc`: a progress bar."""
        param = next(self.model.parameters())
        items = [(i, {"media": path}, None) for i, path in enumerate(paths)]
        loader = DataLoader(items, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False,
                            collate_fn=Collate(self.media.transform(train=False)))  # fmt: skip
        vectors, kept, skipped = [], [], []
        for good, batch, errors, _ in progress(loader, desc=desc or "", total=len(loader), enabled=desc is not None):
            if batch is not None:
                batch = {k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
                         for k, v in batch.items()}  # fmt: skip
                vectors.append(self.media.embed(self.model, batch).float().cpu())
                kept += good
            skipped += [(str(paths[i]), errors[i]) for i in sorted(errors)]
        if not vectors:
            raise DataError(f"none of the {len(paths)} {self.media.plural} could be read, e.g. {skipped[0][0]}: "
                            f"{skipped[0][1]}")  # fmt: skip
        return torch.cat(vectors), kept, skipped

    def embed_items(
        self, paths: list, captions: list[str] | None, embed: str, progress_bar: bool = True, source: str = "items"
    ):
        """(embeddings, indices of the items embedded, [(file, reason)] of the unreadable ones, skipped). An item
        is its media, its caption or both (the sum of the two unit vectors); a file that does not decode is skipped
        in every mode (the search page could not show it), and decoded once."""
        if embed not in EMBED_CHOICES:
            raise UserError(f"--embed must be one of {', '.join(EMBED_CHOICES)}, got {embed!r}")
        if embed != "media" and captions is None:
            raise UserError(f"--embed {embed} needs captions: pass --caption_column naming the data's caption column")
        media_desc = f"embedding {self.media.plural}" if progress_bar else None
        text_desc = "embedding captions" if progress_bar else None
        if embed == "caption":  # the files are decoded only to check them
            checked, skipped = self.media.check(
                Dataset.from_dict({"media": list(paths), "row": list(range(len(paths)))}),
                skip_bad=True,
                split_name=source,
            )
            kept = checked["row"]
            return self.embed_texts([captions[i] for i in kept], text_desc), kept, skipped
        media, kept, skipped = self.embed_readable_media(paths, media_desc)
        if embed == "media":
            return media, kept, skipped
        unit = torch.nn.functional.normalize
        texts = self.embed_texts([captions[i] for i in kept], text_desc)
        return unit(media, dim=-1) + unit(texts, dim=-1), kept, skipped

    def embed_query(self, kind: str, value) -> torch.Tensor:
        """(1, dim): a text, or an image/audio file of the model's modality; another modality is a clear error."""
        if kind == "text":
            return self.embed_texts([value])
        if kind != self.modality:
            model = "an audio–text (CLAP)" if self.modality == "audio" else "an image–text"
            raise UserError(
                f"an {kind} query on an index of {self.modality} items built with {model} model: query with text "
                f"or --{self.modality}"
            )
        return self.embed_media([value])
