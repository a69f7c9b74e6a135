"""`python -m mm_hf.apps.sentiment build | prepare | ablate`: the sentiment application's command line."""

import argparse
import os

from . import __doc__ as PACKAGE_DOC
from .ablation import ablate
from .clips import write_sentiment_clips
from .encoders import build_sentiment_encoders
from .layout import prepare_splits


def build(output_dir: str, sizes=(360, 90, 180), seed: int = 0) -> None:
    """The demo's clips (kept when `label.csv` is already there), its rows and its encoders (`encoders/`)."""
    if not os.path.isfile(os.path.join(output_dir, "label.csv")):
        print("sentiment clips written:", write_sentiment_clips(output_dir, tuple(sizes), seed))
        print("rows written:", prepare_splits(output_dir))
    print("encoders:", build_sentiment_encoders(os.path.join(output_dir, "encoders"), seed=seed))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="mm_hf.apps.sentiment", description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="Write the synthetic clips, their rows and the stand-in encoders.")
    make.add_argument("--output_dir", default="demo_out/sentiment", help="Where the clips and encoders go.")
    make.add_argument("--sizes", type=int, nargs=3, default=(360, 90, 180), help="Clips in train, valid, test.")
    make.add_argument("--seed", type=int, default=0, help="Same seed, same clips.")
    prep = commands.add_parser("prepare", help="label.csv + Raw/ (CMU-MOSEI as MMSA ships it) -> the recipes' rows.")
    prep.add_argument("--data_dir", required=True, help="Folder holding label.csv and Raw/<video_id>/<clip_id>.mp4.")
    prep.add_argument("--output_dir", default=None, help="Where the jsonl files (+ audio/) go; default --data_dir.")
    prep.add_argument("--no_audio", action="store_true", help="Do not extract the sound tracks (no audio-only run).")
    abl = commands.add_parser(
        "ablate", help="Train each modality alone with the fused run's config; print the table. Unknown flags go to "
        "the recipes (e.g. --disable_tqdm true)."
    )  # fmt: skip
    abl.add_argument("--config", default="recipes/configs/sentiment.yaml", help="The fused run's YAML config.")
    abl.add_argument("--modalities", nargs="+", default=["video", "audio", "text"], help="Single-modality runs.")
    abl.add_argument("--report_only", action="store_true", help="Read the runs' folders; train nothing.")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "ablate":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "build":
        build(args.output_dir, args.sizes, args.seed)
    elif args.command == "prepare":
        print(prepare_splits(args.data_dir, args.output_dir, extract_audio=not args.no_audio))
    else:
        ablate(args.config, args.modalities, extra, train=not args.report_only)
