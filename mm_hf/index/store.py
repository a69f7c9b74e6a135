"""The vector store of a search index: a FAISS index of L2-normalised embeddings + one metadata row per item.

Similarity is cosine (inner product of unit vectors), as in the retrieval metrics. A collection of up to
`EXACT_MAX_ITEMS` items is searched exactly (`IndexFlatIP`); past it, `--index_type auto` builds an IVF index
whose `nprobe` is raised until Recall@10 against exact search, measured on a sample of the stored vectors as
queries, reaches the target. HNSW is available on request (`hnsw`, tuned the same way through `efSearch`).

On disk (`DIR/`): `index.faiss`, `items.jsonl` (row i = item id i) and `manifest.json` (what built it: model,
processor, modality, index type and parameters, the measured recall). Each file is written to a temporary name
and moved into place, the manifest last; loading checks that the three agree on the item count, so an index left
half-written by an interrupted `add` is refused rather than answering with shifted metadata.
"""

import json
import os

import faiss
import numpy as np

from ..errors import UserError

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
# Exact search up to here. Measured on 100 000 clustered 64-d unit vectors, one CPU thread: flat 2.9 ms per query,
# IVF (1 264 lists, nprobe 8) 0.05 ms at Recall@10 0.995 and built in 3.3 s; HNSW (M=32) needs 12.7 s to build and
# 0.26 ms per query for 0.984 (efSearch 64). Query cost grows with items x dim, so 512-d embeddings reach the
# flat index's ~3 ms here at ~12 000 items; 50 000 keeps exact answers for any collection a person browses.
EXACT_MAX_ITEMS = 50_000
RECALL_K = 10
RECALL_QUERIES = 1000  # stored vectors sampled as queries to measure the approximate index's recall
MANIFEST, ITEMS, FAISS_FILE = "manifest.json", "items.jsonl", "index.faiss"
FORMAT_VERSION = 1


def normalize(vectors) -> np.ndarray:
    """float32, C-contiguous, rows of unit L2 norm (a zero row stays zero)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (items x dim), got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def resolve_index_type(index_type: str, num_items: int) -> str:
    if index_type not in INDEX_TYPES:
        raise UserError(f"--index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if index_type == "auto":
        return "flat" if num_items <= EXACT_MAX_ITEMS else "ivf"
    return index_type


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the `k` nearest stored vectors by inner product, by brute force."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, min(k, len(vectors)))


def recall_at_k(index, vectors: np.ndarray, *, k: int = RECALL_K, num_queries: int = RECALL_QUERIES, seed: int = 0):
    """Mean overlap of `index`'s top-k with the exact top-k, over up to `num_queries` stored vectors as queries."""
    return _recall_probe(vectors, k, num_queries, seed)(index)


def _recall_probe(vectors: np.ndarray, k: int = RECALL_K, num_queries: int = RECALL_QUERIES, seed: int = 0):
    """A function index -> Recall@k against exact search on sampled stored vectors (the exact answers computed
    once, so tuning can try several search efforts for the price of one brute-force pass)."""
    rng = np.random.default_rng(seed)
    queries = vectors[np.sort(rng.choice(len(vectors), min(num_queries, len(vectors)), replace=False))]
    k = min(k, len(vectors))
    _, exact = exact_search(vectors, queries, k)

    def recall(index) -> float:
        _, approx = index.search(queries, k)
        return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))

    return recall


def _new_index(index_type: str, vectors: np.ndarray, seed: int) -> tuple[faiss.Index, dict]:
    dim = vectors.shape[1]
    if index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        return index, {"M": 32, "efConstruction": 40}
    # IVF: ~4 sqrt(n) lists (faiss' guideline), at least 39 training points per list (faiss warns below).
    nlist = max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(len(vectors), min(len(vectors), 256 * nlist), replace=False)
    index.train(vectors[np.sort(sample)])
    return index, {"nlist": nlist}


def _set_search_effort(index, index_type: str, effort: int) -> None:
    if index_type == "ivf":
        index.nprobe = effort
    elif index_type == "hnsw":
        index.hnsw.efSearch = effort


def _tune(index, index_type: str, vectors: np.ndarray, target_recall: float) -> tuple[dict, float]:
    """Raise nprobe (IVF) / efSearch (HNSW) by doubling until Recall@10 against exact reaches `target_recall`."""
    if index_type == "flat":
        return {}, 1.0
    key, effort, ceiling = ("nprobe", 1, index.nlist) if index_type == "ivf" else ("efSearch", 16, 4096)
    probe = _recall_probe(vectors)
    while True:
        _set_search_effort(index, index_type, effort)
        recall = probe(index)
        if recall >= target_recall or effort >= ceiling:
            return {key: effort}, recall
        effort = min(2 * effort, ceiling)


class SearchIndex:
    """Embeddings in FAISS + item metadata + the manifest saying how they were made (see the module doc)."""

    def __init__(self, index, items: list[dict], manifest: dict):
        self.index, self.items, self.manifest = index, items, manifest

    @classmethod
    def build(cls, vectors, items: list[dict], manifest: dict, *, index_type="auto", target_recall=0.98, seed=0):
        """A new index of `vectors` (normalised here) for `items`; `manifest` gains the index's own fields."""
        vectors = normalize(vectors)
        if len(vectors) != len(items):
            raise ValueError(f"{len(vectors)} embeddings for {len(items)} items")
        if not len(vectors):
            raise UserError("nothing to index: the data holds no usable item")
        kind = resolve_index_type(index_type, len(vectors))
        index, params = _new_index(kind, vectors, seed)
        index.add(vectors)
        search_params, recall = _tune(index, kind, vectors, target_recall)
        manifest = dict(
            manifest, format_version=FORMAT_VERSION, dim=int(vectors.shape[1]), requested_index_type=index_type
        )
        manifest.update(index_type=kind, index_params={**params, **search_params}, target_recall=target_recall)
        manifest.update(count=len(items), **{f"recall@{RECALL_K}_vs_exact": recall})
        return cls(index, list(items), manifest)

    def add(self, vectors, items: list[dict]) -> None:
        """Append items (ids continue from the last one). An approximate index keeps its trained structure and is
        re-tuned on all vectors; an `auto` flat index that grows past `EXACT_MAX_ITEMS` is rebuilt as IVF."""
        vectors = normalize(vectors)
        if vectors.shape[1] != self.manifest["dim"]:
            raise UserError(
                f"embeddings of dimension {vectors.shape[1]} for an index of dimension {self.manifest['dim']}"
            )
        self.index.add(vectors)
        self.items.extend(items)
        kind, requested = self.manifest["index_type"], self.manifest["requested_index_type"]
        if resolve_index_type(requested, len(self.items)) != kind:
            rebuilt = SearchIndex.build(
                self.vectors(),
                self.items,
                self.manifest,
                index_type=requested,
                target_recall=self.manifest["target_recall"],
            )
            self.index, self.manifest = rebuilt.index, rebuilt.manifest
            return
        search_params, recall = _tune(self.index, kind, self.vectors(), self.manifest["target_recall"])
        self.manifest["index_params"].update(search_params)
        self.manifest.update(count=len(self.items), **{f"recall@{RECALL_K}_vs_exact": recall})

    def vectors(self) -> np.ndarray:
        """Every stored (unit) vector, in item order."""
        if self.manifest["index_type"] == "ivf":
            self.index.make_direct_map()  # IVF lists are not in id order; the map finds each id's list
        return self.index.reconstruct_n(0, self.index.ntotal)

    def search(self, queries, k: int = 10) -> list[list[dict]]:
        """For each query embedding, up to `k` results `{"rank", "score", "id", **metadata}`, best first."""
        queries = normalize(queries)
        if queries.shape[1] != self.manifest["dim"]:
            raise UserError(f"query of dimension {queries.shape[1]} for an index of dimension {self.manifest['dim']}")
        if k < 1:
            raise UserError(f"-k must be at least 1, got {k}")
        scores, ids = self.index.search(queries, min(k, len(self.items)))
        return [
            [
                {"rank": rank, "score": float(score), "id": int(i), **self.items[i]}
                for rank, (score, i) in enumerate(zip(row_scores, row_ids, strict=True), 1)
                if i >= 0  # an approximate index may find fewer than k
            ]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def save(self, index_dir: str) -> None:
        os.makedirs(index_dir, exist_ok=True)
        path = os.path.join(index_dir, FAISS_FILE)
        faiss.write_index(self.index, path + ".tmp")
        os.replace(path + ".tmp", path)
        _write_atomic(os.path.join(index_dir, ITEMS), "".join(json.dumps(item) + "\n" for item in self.items))
        _write_atomic(os.path.join(index_dir, MANIFEST), json.dumps(self.manifest, indent=2) + "\n")

    @classmethod
    def load(cls, index_dir: str) -> "SearchIndex":
        path = os.path.join(index_dir, MANIFEST)
        if not os.path.isfile(path):
            raise UserError(
                f"{index_dir} is not a search index (no {MANIFEST}); build one with `python -m mm_hf.index build`"
            )
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: index format {manifest.get('format_version')}, this version reads {FORMAT_VERSION}"
            )
        index = faiss.read_index(os.path.join(index_dir, FAISS_FILE))
        with open(os.path.join(index_dir, ITEMS)) as f:
            items = [json.loads(line) for line in f if line.strip()]
        if index.ntotal != len(items) or len(items) != manifest["count"]:
            raise UserError(
                f"{index_dir} is inconsistent: {index.ntotal} vectors, {len(items)} items, manifest count "
                f"{manifest['count']} (an interrupted write?): rebuild it"
            )
        for key, value in manifest["index_params"].items():
            if key in ("nprobe", "efSearch"):
                _set_search_effort(index, manifest["index_type"], value)
        return cls(index, items, manifest)


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
