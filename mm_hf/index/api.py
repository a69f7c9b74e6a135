"""Build, extend and query a search index: what the `build`, `add`, `search` and `serve` commands call."""

import os

from ..errors import UserError
from .encoder import Embedder
from .items import read_items
from .store import MANIFEST, RECALL_K, SearchIndex


def _embed_data(embedder: Embedder, data: str | None, *, embed: str, media_column, caption_column, keep_columns,
                media_flag, hub: dict | None, media_dir: str, progress_bar: bool):  # fmt: skip
    """(embeddings, metadata rows, skipped [(file, reason)]): unreadable files are skipped and reported."""
    if (data is None) == (hub is None):
        raise UserError("give either --data (a folder or a CSV/JSONL table) or --dataset_name (a Hub dataset)")
    if media_flag and media_flag != f"--{embedder.modality}_column":
        raise UserError(
            f"{media_flag}: the model ({embedder.describe()['model_class']}) embeds {embedder.modality}, "
            f"so its paths are named by --{embedder.modality}_column"
        )
    column = media_column or embedder.modality
    paths, captions, rows = read_items(
        data, embedder.modality, column, caption_column, keep_columns, hub=hub, media_dir=media_dir
    )
    if embed != "media" and captions is None:
        raise UserError(f"--embed {embed} needs captions: {data or hub['dataset_name']} has no caption column (set "
                        "--caption_column)")  # fmt: skip
    vectors, kept, skipped = embedder.embed_items(
        paths, captions, embed, progress_bar=progress_bar, source=data or hub["dataset_name"]
    )
    return vectors.numpy(), [rows[i] for i in kept], skipped


def _hub(dataset_name, dataset_config_name, dataset_split, cache_dir) -> dict | None:
    if dataset_name is None:
        return None
    return {"dataset_name": dataset_name, "dataset_config_name": dataset_config_name,
            "dataset_split": dataset_split, "cache_dir": cache_dir}  # fmt: skip


def build_index(
    model: str,
    data: str | None,
    index_dir: str,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_split: str = "train",
    cache_dir: str | None = None,
    progress_bar: bool = True,
    embed: str = "media",
    index_type: str = "auto",
    target_recall: float = 0.98,
    media_column: str | None = None,
    media_flag: str | None = None,
    caption_column: str | None = None,
    keep_columns: list[str] | None = None,
    max_seq_length: int = 64,
    batch_size: int = 32,
    num_workers: int = 0,
    overwrite: bool = False,
) -> SearchIndex:
    """Embed every item of `data` (or of the Hub dataset's split; media stored as bytes are written under
    `index_dir/media/`) with the dual encoder at `model` and save the index to `index_dir`."""
    if os.path.exists(os.path.join(index_dir, MANIFEST)) and not overwrite:
        raise UserError(f"{index_dir} already holds an index: add items with `add`, or pass --overwrite to rebuild it")
    if not 0 < target_recall <= 1:
        raise UserError(f"--target_recall must be in (0, 1], got {target_recall}")
    embedder = Embedder(model, max_seq_length=max_seq_length, batch_size=batch_size, num_workers=num_workers)
    vectors, rows, skipped = _embed_data(
        embedder,
        data,
        embed=embed,
        media_column=media_column,
        caption_column=caption_column,
        keep_columns=keep_columns,
        media_flag=media_flag,
        hub=_hub(dataset_name, dataset_config_name, dataset_split, cache_dir),
        media_dir=os.path.join(index_dir, "media"),
        progress_bar=progress_bar,
    )
    manifest = {**embedder.describe(), "embed": embed, "media_column": media_column or embedder.modality}
    index = SearchIndex.build(vectors, rows, manifest, index_type=index_type, target_recall=target_recall)
    index.manifest["skipped"] = len(skipped)
    index.save(index_dir)
    _report(index, "built", len(rows), skipped)
    return index


def add_to_index(
    index_dir: str,
    data: str | None,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_split: str = "train",
    cache_dir: str | None = None,
    progress_bar: bool = True,
    model: str | None = None,
    media_column: str | None = None,
    media_flag: str | None = None,
    caption_column: str | None = None,
    keep_columns: list[str] | None = None,
    batch_size: int = 32,
) -> SearchIndex:
    """Embed the items of `data` with the index's own model (refusing another) and append them."""
    index, embedder = open_index(index_dir, model=model, batch_size=batch_size)
    m = index.manifest
    vectors, rows, skipped = _embed_data(
        embedder,
        data,
        embed=m["embed"],
        media_column=media_column or m["media_column"],
        caption_column=caption_column,
        keep_columns=keep_columns,
        media_flag=media_flag,
        hub=_hub(dataset_name, dataset_config_name, dataset_split, cache_dir),
        media_dir=os.path.join(index_dir, "media"),
        progress_bar=progress_bar,
    )
    if media_column and media_column != m["media_column"]:  # stored under the index's own name for the path
        rows = [{**{k: v for k, v in r.items() if k != media_column}, m["media_column"]: r[media_column]} for r in rows]
    index.add(vectors, rows)
    index.manifest["skipped"] = m.get("skipped", 0) + len(skipped)
    index.save(index_dir)
    _report(index, "added", len(rows), skipped)
    return index


def _report(index: SearchIndex, verb: str, count: int, skipped: list) -> None:
    m = index.manifest
    recall = m[f"recall@{RECALL_K}_vs_exact"]
    line = (
        f"{verb} {count} items ({m['count']} in all), {m['index_type']} index {m['index_params'] or ''}".rstrip()
        + f", recall@{RECALL_K} vs exact search {recall:.4f}"
    )
    if skipped:
        line += f"; skipped {len(skipped)} unreadable file(s), e.g. {skipped[0][0]}: {skipped[0][1]}"
    print(line)


def open_index(index_dir: str, *, model: str | None = None, batch_size: int = 32) -> tuple[SearchIndex, Embedder]:
    """The index and its dual encoder (`model`, default: the one it records), refused unless it is the same model
    and processor the index was built with."""
    index = SearchIndex.load(index_dir)
    path = model or index.manifest["model"]
    if model is None and os.path.isabs(path) and not os.path.exists(path):
        raise UserError(f"{index_dir} was built with {path}, which no longer exists: pass --model with that checkpoint")
    embedder = Embedder(path, max_seq_length=index.manifest["max_seq_length"], batch_size=batch_size)
    embedder.check_matches(index.manifest, index_dir)
    return index, embedder


def search(index: SearchIndex, embedder: Embedder, kind: str, query, k: int = 10) -> list[dict]:
    """The top `k` items for one query: `kind` is "text" (a string) or "image"/"audio" (a file path)."""
    return index.search(embedder.embed_query(kind, query).numpy(), k)[0]
