"""Image-text (or audio-text) retrieval: recall@K and median / mean rank in both directions.

Memory bound: the `num_items x num_texts` similarity matrix is never built. Scores are computed
`chunk_size` rows at a time (items for media->text, texts for media<-text) against all of the other
side, so the extra memory at any moment is one `chunk_size x max(num_items, num_texts)` float32 score
block plus a boolean mask of the same shape, on top of the embeddings themselves and an
`num_items x max_captions_per_item` index matrix.
"""

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = """
Cross-modal retrieval with several captions (texts) per item (image or audio clip), as in the
COCO / Flickr30k protocol. Similarity is the dot product of the embeddings, after L2 normalisation
(cosine similarity) when `normalize=True`.

- media->text (image->text or audio->text): for each item, the 1-based rank, among all texts, of its best-ranked correct caption.
- text->media: for each text, the 1-based rank of its item among all items.

Ties (`ties="optimistic"`, the default): rank = 1 + number of candidates with a strictly greater
score, so a correct candidate tied with wrong ones counts as ranked first. With
`ties="pessimistic"`, every wrong candidate whose score is greater than *or equal to* the correct
one is ranked ahead of it; use it to catch collapsed embeddings, which score perfectly with
optimistic ties. For media->text, ties between the item's own captions never matter.

Peak extra memory is `chunk_size x max(num_items, num_texts)` scores (plus a boolean mask of that
shape): the full similarity matrix is never materialised.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): one text embedding per row (`num_texts x dim`).
    references (`list[int]`): for each text, the index in `media_embeds` of the item it describes.
    media_embeds (array-like, `num_items x dim`): the item (image or audio clip) embeddings. Every item
        needs at least one text. `image_embeds` is accepted under its former, image-only name.
    ks (`tuple[int]`, *optional*, defaults to `(1, 5, 10)`): the K of the recall@K metrics.
    chunk_size (`int`, *optional*, defaults to 1024): rows scored at once; bounds memory.
    normalize (`bool`, *optional*, defaults to `True`): L2-normalise embeddings (cosine similarity).
    ties (`str`, *optional*, defaults to `"optimistic"`): `"optimistic"` or `"pessimistic"` tie handling.
    modality (`str`, *optional*, defaults to `"image"`): what the items are, as named in the keys:
        `"audio"` gives `audio_to_text_recall@1`, `text_to_audio_median_rank`, ...
Returns:
    image_to_text_recall@K (`float`): fraction of items whose best correct text ranks <= K, for each K.
    image_to_text_median_rank, image_to_text_mean_rank (`float`): over items, 1-based.
    text_to_image_recall@K (`float`): fraction of texts whose item ranks <= K, for each K.
    text_to_image_median_rank, text_to_image_mean_rank (`float`): over texts, 1-based.
    (with `modality="audio"`: audio_to_text_* and text_to_audio_*.)
    retrieval_mean_recall (`float`): mean of all the recalls above.
    num_items, num_texts (`float`): the counts evaluated.
Examples:
    >>> retrieval = evaluate.load("mm_hf/metrics/retrieval")
    >>> out = retrieval.compute(
    ...     predictions=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]],
    ...     references=[0, 0, 1],
    ...     media_embeds=[[1.0, 0.0], [0.0, 1.0]],
    ...     ks=(1,),
    ... )
    >>> out["image_to_text_recall@1"], out["text_to_image_recall@1"]
    (1.0, 1.0)
"""

_TIES = ("optimistic", "pessimistic")


def _as_embeddings(x, name: str, device=None) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    tensor = tensor.to(device=device, dtype=torch.float32)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dim), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


def _caption_index(text_to_media: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, its text indices padded to `max_captions` by repeating its first one; plus the validity mask."""
    counts = torch.bincount(text_to_media, minlength=num_items)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} item(s) have no caption/text, e.g. item index {shown}")
    order = torch.argsort(text_to_media, stable=True)  # text indices grouped by item
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(order), device=order.device) - starts[text_to_media[order]]
    index = order[starts].unsqueeze(1).repeat(1, int(counts.max()))
    index[text_to_media[order], position] = order
    valid = torch.arange(index.shape[1], device=order.device) < counts.unsqueeze(1)
    return index, valid


def _summary(direction: str, ranks: torch.Tensor, ks) -> dict:
    ranks = ranks.cpu().numpy()
    out = {f"{direction}_recall@{k}": float((ranks <= k).mean()) for k in ks}
    out[f"{direction}_median_rank"] = float(np.median(ranks))
    out[f"{direction}_mean_rank"] = float(ranks.mean())
    return out


@torch.no_grad()
def retrieval_scores(
    media_embeds,
    text_embeds,
    text_to_media,
    ks=(1, 5, 10),
    chunk_size: int = 1024,
    normalize: bool = True,
    ties: str = "optimistic",
    modality: str = "image",
    media_name: str = "media_embeds",
    return_ranks: bool = False,
) -> dict:
    """Recall@K and median / mean rank for media->text and text->media retrieval (see the module docstring).

    `media_embeds` is `(num_items, dim)` (images or audio clips), `text_embeds` `(num_texts, dim)`,
    `text_to_media` `(num_texts,)` item indices. Runs on the device of `media_embeds` when it is a tensor, else on
    the CPU; every similarity block is at most `chunk_size x max(num_items, num_texts)`. `modality` names the items
    in the keys (`"audio"`: `audio_to_text_recall@1`, `text_to_audio_recall@1`, ...); `media_name` names the
    argument the caller passed them as, in errors. `return_ranks`: also every query's 1-based rank,
    `{modality}_to_text_ranks` (per item) and `text_to_{modality}_ranks` (per text), int arrays, for error bars
    that resample the queries (mm_hf.evaluate).
    """
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    if not isinstance(modality, str) or not modality.isidentifier():
        raise ValueError(f"modality must be a name such as 'image' or 'audio', got {modality!r}")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    device = media_embeds.device if isinstance(media_embeds, torch.Tensor) else None
    items = _as_embeddings(media_embeds, media_name, device)
    texts = _as_embeddings(text_embeds, "text embeddings (predictions)", items.device)
    if texts.shape[1] != items.shape[1]:
        raise ValueError(
            f"text embeddings (predictions) have dimension {texts.shape[1]} but {media_name} has {items.shape[1]}"
        )
    targets = text_to_media if isinstance(text_to_media, torch.Tensor) else torch.as_tensor(np.asarray(text_to_media))
    targets = targets.to(device=items.device, dtype=torch.long).flatten()
    if targets.shape[0] != texts.shape[0]:
        raise ValueError(f"got {targets.shape[0]} item indices (references) for {texts.shape[0]} text embeddings")
    num_items, num_texts = items.shape[0], texts.shape[0]
    bad = ((targets < 0) | (targets >= num_items)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"references must be item indices in [0, {num_items}); text {int(bad[0])} has {int(targets[bad[0]])}"
        )
    if normalize:
        items = torch.nn.functional.normalize(items, dim=-1)
        texts = torch.nn.functional.normalize(texts, dim=-1)
    pessimistic = ties == "pessimistic"

    # media -> text: rank of each item's best correct caption among all texts.
    caption_index, caption_valid = _caption_index(targets, num_items)
    item_ranks = []
    for start in range(0, num_items, chunk_size):
        sims = torch.matmul(items[start : start + chunk_size], texts.T)  # (chunk, num_texts)
        own = sims.gather(1, caption_index[start : start + chunk_size])  # (chunk, max_captions)
        best = own.max(dim=1, keepdim=True).values
        if pessimistic:  # wrong texts >= best = all texts >= best - own texts == best
            own_at_best = ((own == best) & caption_valid[start : start + chunk_size]).sum(1)
            item_ranks.append((sims >= best).sum(1) - own_at_best + 1)
        else:
            item_ranks.append((sims > best).sum(1) + 1)
        del sims

    # text -> media: rank of each text's item among all items.
    text_ranks = []
    for start in range(0, num_texts, chunk_size):
        sims = torch.matmul(texts[start : start + chunk_size], items.T)  # (chunk, num_items)
        correct = sims.gather(1, targets[start : start + chunk_size, None])
        text_ranks.append((sims >= correct).sum(1) if pessimistic else (sims > correct).sum(1) + 1)
        del sims

    item_ranks, text_ranks = torch.cat(item_ranks), torch.cat(text_ranks)
    out = {
        **_summary(f"{modality}_to_text", item_ranks, ks),
        **_summary(f"text_to_{modality}", text_ranks, ks),
    }
    recalls = [v for key, v in out.items() if "_recall@" in key]
    out["retrieval_mean_recall"] = float(np.mean(recalls))
    out["num_items"] = float(num_items)
    out["num_texts"] = float(num_texts)
    if return_ranks:
        out[f"{modality}_to_text_ranks"] = item_ranks.cpu().numpy()
        out[f"text_to_{modality}_ranks"] = text_ranks.cpu().numpy()
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1411.2539", "https://arxiv.org/abs/2103.00020"],
        )

    def _compute(
        self,
        predictions,
        references,
        media_embeds=None,
        image_embeds=None,
        ks=(1, 5, 10),
        chunk_size=1024,
        normalize=True,
        ties="optimistic",
        modality="image",
        return_ranks=False,
    ):
        if media_embeds is not None and image_embeds is not None:
            raise ValueError("pass the item embeddings once: `media_embeds=` (or its former name `image_embeds=`)")
        name = "media_embeds" if image_embeds is None else "image_embeds"
        media_embeds = media_embeds if image_embeds is None else image_embeds
        if media_embeds is None:
            raise ValueError(
                "retrieval needs `media_embeds=` (num_items x dim; or `image_embeds=`) passed to compute()"
            )
        return retrieval_scores(
            media_embeds,
            predictions,
            references,
            ks=ks,
            chunk_size=chunk_size,
            normalize=normalize,
            ties=ties,
            modality=modality,
            media_name=name,
            return_ranks=return_ranks,
        )
