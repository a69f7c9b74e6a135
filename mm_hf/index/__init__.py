"""A multimodal search index over a dual encoder's embeddings (CLIP, SigLIP, CLAP, VisionTextDualEncoder).

    python -m mm_hf.index build out/clip_retrieval --data photos/ --index_dir photos.index
    python -m mm_hf.index build out/clip_retrieval --dataset_name user/photos --dataset_split train \
        --index_dir photos.index
    python -m mm_hf.index add photos.index --data more_photos/
    python -m mm_hf.index search photos.index --text "a dog on a beach" -k 10 [--format table]
    python -m mm_hf.index search photos.index --image query.jpg
    python -m mm_hf.index serve photos.index --port 8000

`build` reads a folder, a CSV/JSONL table or a Hub dataset's split (`--dataset_name`; media stored in it as bytes
are written once to `INDEX_DIR/media/`), embeds every image or audio clip (`--embed media`, the default), caption
(`caption`) or both with `mm_hf.retrieval`'s embedding code (a progress bar over the pass; each file decoded once,
the embedding pass being the check: a file that does not decode is skipped and reported) and stores the unit
vectors in FAISS: exact search up to 50 000 items,
IVF past it (or `--index_type flat|ivf|hnsw`), with the approximate index's Recall@10 against exact search
measured at build time (`store.py`). The index records the model and processor it was built with (path and
fingerprints, `encoder.py`) and refuses to be queried or extended with another; a query of a modality the
model does not embed (an audio file on an image index) is refused too.
"""

from .api import add_to_index, build_index, open_index, search
from .store import SearchIndex

__all__ = ["SearchIndex", "add_to_index", "build_index", "open_index", "search"]
