"""The layout of a MIMIC-CXR-style dataset (radiographs, free-text reports, lab values) and `prepare`, which joins
it into the JSONL splits recipes/fusion_imagetext_cls.py reads.

Expected input (the files MIMIC-CXR-JPG 2.0, MIMIC-CXR's reports and a labs table have; none is downloaded here):

    <image_root>/files/p10/p10000032/s50414267/<dicom_id>.jpg      one folder per study, one JPEG per image
    <image_root>/mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ViewPosition (PA, AP, LATERAL, ...)
    <image_root>/mimic-cxr-2.0.0-split.csv      dicom_id, study_id, subject_id, split (train / validate / test)
    <labels_file>                               subject_id, study_id, one column per finding: 1.0 positive,
                                                0.0 negative, -1.0 uncertain, blank not mentioned (the layout of
                                                mimic-cxr-2.0.0-chexpert.csv / -negbio.csv)
    <report_root>/files/p10/p10000032/s50414267.txt                 the study's report (MIMIC-CXR reports)
    <labs_file>                                 subject_id, study_id, one numeric column per lab test (blank: not
                                                measured), e.g. MIMIC-IV hosp/labevents.csv `valuenum` pivoted by
                                                `itemid`, the last value in the 24 h before the study

Output: `<output_dir>/{train,validation,test}.jsonl`, one row per study: `image` (the path of its first frontal
image relative to the file, null when the study has none), `report` (the chosen report sections, null when absent),
one number (or null) per lab, one 0/1 per finding, `subject_id`, `study_id`. Splits follow the split file (by
patient in MIMIC-CXR: no patient in two splits). A study with none of the three is left out (and counted).

Only the report's clinical sections are kept by default (INDICATION, HISTORY, ...): FINDINGS and IMPRESSION are the
radiologist's reading of the image, and CheXpert-style labels are mined from them, so a model reading them learns
the labeller rather than the image and the record (its "fusion" would be text alone).
"""

import csv
import json
import logging
import math
import os
import re
from collections.abc import Sequence

from ...errors import DataError, UserError

logger = logging.getLogger(__name__)

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
ID_COLUMNS = ("subject_id", "study_id")
FRONTAL_VIEWS = ("PA", "AP")
CLINICAL_SECTIONS = ("INDICATION", "HISTORY", "CLINICAL HISTORY", "REASON FOR EXAMINATION")
UNCERTAIN_POLICIES = ("zeros", "ones", "drop")
SPLIT_NAMES = {"train": "train", "validate": "validation", "validation": "validation", "test": "test"}
# A report section header: a capitalised line start followed by a colon ("INDICATION:", " FINDINGS:").
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&]*[A-Z]):", re.MULTILINE)


def study_image_path(subject_id, study_id, dicom_id: str) -> str:
    """`files/p10/p10000032/s50414267/<dicom_id>.jpg`: where MIMIC-CXR-JPG keeps an image, under its root."""
    subject = str(subject_id)
    return os.path.join("files", f"p{subject[:2]}", f"p{subject}", f"s{study_id}", f"{dicom_id}.jpg")


def study_report_path(subject_id, study_id) -> str:
    """`files/p10/p10000032/s50414267.txt`: where MIMIC-CXR keeps a study's report, under its root."""
    subject = str(subject_id)
    return os.path.join("files", f"p{subject[:2]}", f"p{subject}", f"s{study_id}.txt")


def report_sections(text: str, sections: Sequence[str] | None) -> str | None:
    """The named sections of a report (in report order, headers dropped, whitespace collapsed); the whole text
    when `sections` is empty; None when none of them is there."""
    if not sections:
        return " ".join(text.split()) or None
    wanted = {s.upper() for s in sections}
    headers = list(_HEADER.finditer(text))
    parts = []
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        if header.group(1).strip() in wanted:
            parts.append(" ".join(text[header.end() : following.start() if following else len(text)].split()))
    return " ".join(p for p in parts if p) or None


def read_table(path: str, required: Sequence[str]) -> list[dict]:
    """A CSV file as a list of row dicts; refuses a missing file or missing columns, naming both."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: column(s) {missing} missing; it has {reader.fieldnames}")
        return list(reader)


def _number(value: str | None, where: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number (leave the cell blank when not measured)") from None
    return None if math.isnan(number) else number


def _finding(value: str, uncertain: str, where: str) -> int | None:
    """CheXpert-style cell -> 0/1, or None to drop the study (an uncertain mention under `uncertain="drop"`)."""
    number = _number(value, where)
    if number is None or number == 0:  # blank: not mentioned in the report, read as negative
        return 0
    if number == 1:
        return 1
    if number == -1:
        return {"zeros": 0, "ones": 1, "drop": None}[uncertain]
    raise DataError(f"{where}: finding value {value!r}; expected 1.0, 0.0, -1.0 or blank")


def prepare(
    image_root: str,
    report_root: str,
    labels_file: str,
    labs_file: str,
    output_dir: str,
    *,
    findings: Sequence[str] | None = None,
    labs: Sequence[str] | None = None,
    views: Sequence[str] = FRONTAL_VIEWS,
    sections: Sequence[str] | None = CLINICAL_SECTIONS,
    uncertain: str = "zeros",
) -> dict:
    """Join the layout above into `<output_dir>/{train,validation,test}.jsonl`; returns
    `{"splits": {split: rows}, "findings": [...], "labs": [...], "missing": {modality: rows}}`.

    `findings` / `labs` pick columns of the labels / labs file (default: all but the ids); `views` the image
    views accepted, in order of preference; `sections` the report sections kept (empty: the whole report);
    `uncertain` maps an uncertain finding (-1.0) to 0 ("zeros"), 1 ("ones") or drops the study ("drop").
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"--uncertain {uncertain!r}: choose one of {', '.join(UNCERTAIN_POLICIES)}")
    metadata_path, split_path = os.path.join(image_root, METADATA_FILE), os.path.join(image_root, SPLIT_FILE)
    metadata = read_table(metadata_path, ["dicom_id", *ID_COLUMNS, "ViewPosition"])
    split_rows = read_table(split_path, ["dicom_id", *ID_COLUMNS, "split"])
    labels = read_table(labels_file, ID_COLUMNS)
    lab_rows = read_table(labs_file, ID_COLUMNS)
    findings = list(findings or [c for c in labels[0] if c not in ID_COLUMNS]) if labels else list(findings or [])
    labs = list(labs or [c for c in lab_rows[0] if c not in ID_COLUMNS]) if lab_rows else list(labs or [])
    for path, rows, wanted, flag in (
        (labels_file, labels, findings, "--findings"),
        (labs_file, lab_rows, labs, "--labs"),
    ):
        absent = [c for c in wanted if rows and c not in rows[0]]
        if absent:
            raise UserError(f"{flag} {absent}: not columns of {path} (it has {list(rows[0])})")

    split_of = {row["study_id"]: SPLIT_NAMES.get(row["split"]) for row in split_rows}
    unknown = sorted({row["split"] for row in split_rows if row["split"] not in SPLIT_NAMES})
    if unknown:
        raise DataError(f"{split_path}: split value(s) {unknown}; expected train, validate or test")
    rank = {view.upper(): i for i, view in enumerate(views)}
    best_image: dict[str, tuple[int, str]] = {}
    for row in metadata:
        view = row["ViewPosition"].strip().upper()
        if view in rank and rank[view] < best_image.get(row["study_id"], (len(rank), ""))[0]:
            best_image[row["study_id"]] = (
                rank[view],
                study_image_path(row["subject_id"], row["study_id"], row["dicom_id"]),
            )
    labs_of = {row["study_id"]: row for row in lab_rows}

    os.makedirs(output_dir, exist_ok=True)
    out = {split: [] for split in ("train", "validation", "test")}
    missing = {"image": 0, "report": 0, "labs": 0}
    dropped = unsplit = empty = 0
    for i, row in enumerate(labels):
        where = f"{labels_file}, data row {i}"
        values = {f: _finding(row[f], uncertain, f"{where}, column {f!r}") for f in findings}
        split = split_of.get(row["study_id"])
        if split is None:
            unsplit += 1
            continue
        if None in values.values():
            dropped += 1
            continue
        image = best_image.get(row["study_id"])
        image_path = os.path.join(image_root, image[1]) if image else None
        if image_path is not None and not os.path.isfile(image_path):
            raise DataError(f"{metadata_path}: study {row['study_id']}'s image {image_path} does not exist")
        report_path = os.path.join(report_root, study_report_path(row["subject_id"], row["study_id"]))
        report = None
        if os.path.isfile(report_path):
            with open(report_path, encoding="utf-8") as f:
                report = report_sections(f.read(), sections)
        lab = labs_of.get(row["study_id"], {})
        lab_values = {c: _number(lab.get(c), f"{labs_file}, study {row['study_id']}, column {c!r}") for c in labs}
        if image_path is None and report is None and all(v is None for v in lab_values.values()):
            empty += 1  # nothing to read: the recipe refuses a row without any modality
            continue
        missing["image"] += image_path is None
        missing["report"] += report is None
        missing["labs"] += all(v is None for v in lab_values.values())
        record = {"image": os.path.relpath(image_path, output_dir) if image_path else None, "report": report}
        record.update(lab_values)
        record.update(values)
        record.update({c: int(row[c]) for c in ID_COLUMNS})
        out[split].append(record)
    for split, rows in out.items():
        if not rows:
            raise DataError(f"no study of {labels_file} is in the {split} split of {split_path}")
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if unsplit:
        logger.warning("%d labelled studies are in no split of %s: left out", unsplit, split_path)
    if empty:
        logger.warning("%d studies have no frontal image, no report section and no lab value: left out", empty)
    if dropped:
        logger.warning("%d studies with an uncertain finding dropped (--uncertain drop)", dropped)
    return {"splits": {s: len(r) for s, r in out.items()}, "findings": findings, "labs": labs, "missing": missing}
