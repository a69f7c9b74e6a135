"""`python -m mm_hf.index build | add | search | serve`: the command line of the search index (see the package doc)."""

import argparse
import json

from ..errors import UserError
from .api import add_to_index, build_index, open_index, search
from .encoder import EMBED_CHOICES
from .store import INDEX_TYPES


def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help="A folder of images/clips (optionally with metadata.jsonl/csv: "
        "file_name + caption + other columns) or a CSV/JSONL table with a media path column.",
    )
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="A Hub dataset (id, or a local `datasets` folder / parquet files) instead of --data; media stored in it "
        "as bytes are written once to INDEX_DIR/media/.",
    )
    parser.add_argument("--dataset_config_name", default=None, help="Configuration name of the Hub dataset.")
    parser.add_argument("--dataset_split", default="train", help="Split of --dataset_name to index.")
    parser.add_argument("--cache_dir", default=None, help="Where the datasets library caches --dataset_name.")
    parser.add_argument("--disable_tqdm", action="store_true", help="No progress bar over the embedding pass.")
    parser.add_argument(
        "--image_column", default=None, help="Column of the table holding image paths (default: image)."
    )
    parser.add_argument(
        "--audio_column",
        default=None,
        help="Column holding audio paths, for an audio-text model (CLAP; default: audio).",
    )
    parser.add_argument("--caption_column", default=None, help="Caption column (default: `caption` when present).")
    parser.add_argument(
        "--keep_columns",
        nargs="+",
        default=None,
        help="Table columns stored with each item and shown in results (default: all).",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Items embedded at once.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm_hf.index", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="Embed a collection with a dual encoder and save a new index.")
    build.add_argument(
        "model", help="Dual encoder checkpoint (CLIP, SigLIP, CLAP, VisionTextDualEncoder folder or id)."
    )
    _data_flags(build)
    build.add_argument("--index_dir", required=True, help="Folder to write the index to.")
    build.add_argument(
        "--embed",
        choices=EMBED_CHOICES,
        default="media",
        help="What represents an item: its image/clip, its caption, or both (mean of the two).",
    )
    build.add_argument(
        "--index_type",
        choices=INDEX_TYPES,
        default="auto",
        help="flat: exact; ivf/hnsw: approximate; auto: flat up to 50 000 items, then ivf.",
    )
    build.add_argument(
        "--target_recall",
        type=float,
        default=0.98,
        help="Approximate index: search effort is raised until Recall@10 vs exact reaches this.",
    )
    build.add_argument("--max_seq_length", type=int, default=64, help="Text tokens read (queries and captions).")
    build.add_argument("--num_workers", type=int, default=0, help="DataLoader workers decoding the media.")
    build.add_argument("--overwrite", action="store_true", help="Replace an index already in --index_dir.")

    add = commands.add_parser("add", help="Embed more items with the index's model and append them.")
    add.add_argument("index_dir")
    _data_flags(add)
    add.add_argument("--model", default=None, help="The index's model, if it has moved since the build.")

    find = commands.add_parser("search", help="Top-k items for a text, image or audio query.")
    find.add_argument("index_dir")
    query = find.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="A text query.")
    query.add_argument("--image", help="An image file as the query (image indexes).")
    query.add_argument("--audio", help="An audio file as the query (audio/CLAP indexes).")
    find.add_argument("-k", type=int, default=10, help="Number of results.")
    find.add_argument(
        "--format", choices=("jsonl", "table"), default="jsonl", help="One JSON object per result, or a table."
    )
    find.add_argument("--model", default=None, help="The index's model, if it has moved since the build.")

    serve = commands.add_parser("serve", help="A local search page over the index.")
    serve.add_argument("index_dir")
    serve.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: this machine only).")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=None, help="The index's model, if it has moved since the build.")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    data = {}
    if args.command in ("build", "add"):
        if args.image_column and args.audio_column:
            raise UserError("pass --image_column or --audio_column (the model's modality), not both")
        flag = "image" if args.image_column else "audio" if args.audio_column else None
        if (args.data is None) == (args.dataset_name is None):
            raise UserError("give either --data (a folder or a CSV/JSONL table) or --dataset_name (a Hub dataset)")
        data = {"media_column": args.image_column or args.audio_column, "media_flag": flag and f"--{flag}_column",
                "caption_column": args.caption_column, "keep_columns": args.keep_columns,
                "dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name,
                "dataset_split": args.dataset_split, "cache_dir": args.cache_dir,
                "progress_bar": not args.disable_tqdm}  # fmt: skip
    if args.command == "build":
        build_index(
            args.model, args.data, args.index_dir, embed=args.embed, index_type=args.index_type,
            target_recall=args.target_recall, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
            num_workers=args.num_workers, overwrite=args.overwrite, **data,
        )  # fmt: skip
    elif args.command == "add":
        add_to_index(args.index_dir, args.data, model=args.model, batch_size=args.batch_size, **data)
    elif args.command == "search":
        if args.k < 1:
            raise UserError(f"-k must be at least 1, got {args.k}")
        kind, value = next((k, v) for k in ("text", "image", "audio") if (v := getattr(args, k)) is not None)
        index, embedder = open_index(args.index_dir, model=args.model)
        results = search(index, embedder, kind, value, args.k)
        print(format_results(results, args.format, index.manifest["media_column"]))
    else:
        from .server import serve  # FastAPI/uvicorn are loaded only to serve

        serve(args.index_dir, host=args.host, port=args.port, model=args.model)


def format_results(results: list[dict], fmt: str, media_column: str) -> str:
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in results)
    others = [c for c in results[0] if c not in ("rank", "score", "id", media_column)] if results else []
    lines = [f"{'rank':>4}  {'score':>7}  {'id':>6}  {media_column}" + "".join(f"  {c}" for c in others)]
    for r in results:
        extra = "".join(f"  {r.get(c, '')}" for c in others)
        lines.append(f"{r['rank']:>4}  {r['score']:>7.4f}  {r['id']:>6}  {r[media_column]}{extra}")
    return "\n".join(lines)
