"""A small synthetic dataset in the MIMIC-CXR-style layout (`layout.py`) whose findings need the modalities together.

Each study draws five independent, balanced hidden factors, each seen by one modality only:

    opacity         image   a soft round opacity in one lung field of the radiograph
    inflammation    labs    raised white cells (wbc) and C-reactive protein (crp)
    congestion      labs    raised BNP (bnp)
    cancer history  report  the indication names a known malignancy (else another history)
    dyspnoea        report  the indication names breathlessness with oedema (else another complaint)

and the findings are the clinical conjunctions a reader combines:

    pneumonia     = opacity and inflammation      (image + labs)
    malignancy    = opacity and cancer history    (image + report)
    heart_failure = dyspnoea and congestion       (report + labs)

An opacity with normal markers is not pneumonia, raised markers without an opacity are not either. So one modality
alone reaches at most ROC-AUC 0.83 on the two findings it half-sees and 0.5 on the third (macro at most 0.72), with
one modality removed at most 0.89 macro (bounds in expectation: a finite test set scatters around them), while all
three together can reach ~1 (less the lab cells left blank:
wbc 15 %, crp 30 %, bnp 20 %, creatinine and haemoglobin 10 %, and values near the normal range). Creatinine and
haemoglobin carry no signal. The report also has FINDINGS and IMPRESSION sections describing the opacity, as real
reports do; `prepare` keeps the clinical sections only (see layout.py for why).
"""

import csv
import os
import re

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .layout import METADATA_FILE, SPLIT_FILE, study_image_path, study_report_path

FINDINGS = ("pneumonia", "malignancy", "heart_failure")
LAB_TESTS = ("wbc", "crp", "bnp", "creatinine", "hemoglobin")
LAB_MISSING_RATES = {"wbc": 0.15, "crp": 0.30, "bnp": 0.20, "creatinine": 0.10, "hemoglobin": 0.10}
DYSPNOEA = ("worsening shortness of breath and bilateral leg swelling", "orthopnea and increasing dyspnea on exertion",
            "progressive dyspnea and lower extremity edema", "paroxysmal nocturnal dyspnea and weight gain")  # fmt: skip
OTHER_COMPLAINTS = ("cough", "chest pain", "a fall at home", "preoperative evaluation", "fatigue", "palpitations")
CANCER_HISTORY = ("History of lung cancer status post right upper lobectomy.", "Known metastatic breast cancer.",
                  "History of colon cancer on chemotherapy.", "History of melanoma with prior resection.")  # fmt: skip
OTHER_HISTORY = ("History of hypertension.", "History of type 2 diabetes.", "No significant past medical history.",
                 "History of hyperlipidemia.", "History of atrial fibrillation.")  # fmt: skip
QUESTIONS = ("Evaluate for pneumonia.", "Evaluate for acute cardiopulmonary process.", "Assess for effusion.",
             "Evaluate for interval change.")  # fmt: skip


def report_vocabulary() -> list[str]:
    """The lower-case words the synthetic reports' indications use (a word-level tokenizer for a tiny test BERT)."""
    phrases = DYSPNOEA + OTHER_COMPLAINTS + CANCER_HISTORY + OTHER_HISTORY + QUESTIONS + ("year old man woman with",)
    return sorted({w for p in phrases for w in re.findall(r"[a-z0-9]+", p.lower())})


def radiograph(rng: np.random.Generator, opacity: bool, size: int = 128) -> tuple[Image.Image, str | None]:
    """A frontal chest radiograph-like greyscale image (trunk, two dark lung fields with ribs, heart, spine), with
    anatomy, exposure and noise varying per study; with `opacity` a soft bright round opacity in a lung field.
    Returns the image and the opacity's zone ("right lower", ...: the patient's side, image left) or None."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.15)
    body = ((x - 0.5) / rng.uniform(0.42, 0.48)) ** 2 + ((y - 0.62) / 0.55) ** 2 < 1
    img[body] = 0.55
    centre = 0.5 + rng.normal(0, 0.015)
    width, height = rng.uniform(0.14, 0.18), rng.uniform(0.29, 0.35)
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lungs |= ((x - centre - side * rng.uniform(0.17, 0.2)) / width) ** 2 + ((y - 0.5) / height) ** 2 < 1
    img[lungs] = 0.22
    for k in range(7):  # posterior ribs: arcs sloping down towards the sides
        rib = np.abs(y - (0.2 + 0.085 * k + 0.5 * (x - centre) ** 2)) < 0.011
        img[rib & lungs] += 0.12
    heart = ((x - centre - 0.06) / rng.uniform(0.11, 0.16)) ** 2 + ((y - 0.68) / 0.14) ** 2 < 1
    img[heart] = 0.6
    img[(np.abs(x - centre) < 0.035) & body] = 0.7
    zone = None
    if opacity:
        rows, cols = np.nonzero(lungs & ~heart)
        i = rng.integers(len(rows))
        cy, cx, radius = rows[i] / size, cols[i] / size, rng.uniform(0.07, 0.11)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        img += rng.uniform(0.45, 0.6) * blob * lungs
        zone = f"{'right' if cx < centre else 'left'} {('upper', 'mid', 'lower')[min(int((cy - 0.15) / 0.24), 2)]}"
    img = gaussian_filter(img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, img.shape), 1.0)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L"), zone


def lateral_radiograph(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """A lateral view (some studies have one; `prepare` keeps the frontal image)."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.where(((x - 0.5) / 0.3) ** 2 + ((y - 0.6) / 0.5) ** 2 < 1, 0.5, 0.15)
    img[((x - 0.5) / 0.18) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 0.25
    img = gaussian_filter(img + rng.normal(0, 0.03, img.shape), 1.0)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")


def report_text(rng: np.random.Generator, dyspnoea: bool, cancer: bool, zone: str | None) -> str:
    """A report laid out like MIMIC-CXR's (de-identified age as ___), its sections on their own lines."""
    complaint = rng.choice(DYSPNOEA if dyspnoea else OTHER_COMPLAINTS)
    history = rng.choice(CANCER_HISTORY if cancer else OTHER_HISTORY)
    sex = rng.choice(("man", "woman"))
    if zone:
        findings = f"There is a focal rounded opacity in the {zone} lung zone."
        impression = f"Focal opacity in the {zone} lung; infection or a mass in the appropriate clinical setting."
    else:
        findings, impression = "The lungs are clear.", "No acute cardiopulmonary process."
    return (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n \n"
        f" INDICATION:  ___-year-old {sex} with {complaint}.  {history}  {rng.choice(QUESTIONS)}\n \n"
        " TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  None.\n \n"
        f" FINDINGS: \n \n {findings}  No pleural effusion or pneumothorax.\n \n"
        f" IMPRESSION: \n \n {impression}\n"
    )


def lab_values(rng: np.random.Generator, inflamed: bool, congested: bool) -> dict[str, float | None]:
    """One study's labs (wbc 10^9/L, crp mg/L, bnp pg/mL, creatinine mg/dL, hemoglobin g/dL), some left blank."""
    values = {
        "wbc": rng.normal(15.0, 3.0) if inflamed else rng.normal(7.5, 2.0),
        "crp": rng.lognormal(np.log(90), 0.6) if inflamed else rng.lognormal(np.log(8), 0.8),
        "bnp": rng.lognormal(np.log(900), 0.6) if congested else rng.lognormal(np.log(70), 0.7),
        "creatinine": rng.normal(1.0, 0.25),
        "hemoglobin": rng.normal(13.5, 1.5),
    }
    return {k: None if rng.random() < LAB_MISSING_RATES[k] else round(max(v, 0.1), 1) for k, v in values.items()}


def write_synthetic_mimic(
    output_dir: str, studies: tuple[int, int, int] = (600, 150, 300), seed: int = 0, image_size: int = 128
) -> dict:
    """Write the layout of layout.py under `output_dir`: `mimic-cxr-jpg/` (images, metadata, split),
    `mimic-cxr-reports/files/...txt`, `findings.csv` and `labs.csv`. `studies` per split (train, validate, test),
    patients split as MIMIC-CXR does (a patient's one or two studies in one split). Returns the paths for
    `prepare` (image_root, report_root, labels_file, labs_file)."""
    rng = np.random.default_rng(seed)
    image_root, report_root = os.path.join(output_dir, "mimic-cxr-jpg"), os.path.join(output_dir, "mimic-cxr-reports")
    metadata, splits, findings, labs = [], [], [], []
    subject, study = 10000032, 50000000
    for split, count in zip(("train", "validate", "test"), studies, strict=True):
        written = 0
        while written < count:
            subject += int(rng.integers(1, 40))
            for _ in range(min(int(rng.integers(1, 3)), count - written)):
                study += int(rng.integers(1, 5000))
                opacity, inflamed, congested, cancer, dyspnoea = rng.random(5) < 0.5
                image, zone = radiograph(rng, opacity, image_size)
                views = [("PA", image)] + (
                    [("LATERAL", lateral_radiograph(rng, image_size))] if rng.random() < 0.2 else []
                )
                for view, picture in views:
                    dicom = "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, 5))
                    path = os.path.join(image_root, study_image_path(subject, study, dicom))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    picture.save(path, quality=95)
                    metadata.append([dicom, subject, study, view, image_size, image_size])
                    splits.append([dicom, study, subject, split])
                path = os.path.join(report_root, study_report_path(subject, study))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(report_text(rng, dyspnoea, cancer, zone))
                labels = {"pneumonia": opacity and inflamed, "malignancy": opacity and cancer,
                          "heart_failure": dyspnoea and congested}  # fmt: skip
                # As CheXpert-style labels: 1.0 positive, 0.0 negative, blank when the report does not mention it.
                findings.append([subject, study, *("1.0" if v else rng.choice(("0.0", "")) for v in labels.values())])
                lab = lab_values(rng, inflamed, congested)
                labs.append([subject, study, *("" if lab[k] is None else lab[k] for k in LAB_TESTS)])
                written += 1
    tables = {
        os.path.join(image_root, METADATA_FILE): (["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows",
                                                   "Columns"], metadata),
        os.path.join(image_root, SPLIT_FILE): (["dicom_id", "study_id", "subject_id", "split"], splits),
        os.path.join(output_dir, "findings.csv"): (["subject_id", "study_id", *FINDINGS], findings),
        os.path.join(output_dir, "labs.csv"): (["subject_id", "study_id", *LAB_TESTS], labs),
    }  # fmt: skip
    for path, (header, rows) in tables.items():
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return {
        "image_root": image_root,
        "report_root": report_root,
        "labels_file": os.path.join(output_dir, "findings.csv"),
        "labs_file": os.path.join(output_dir, "labs.csv"),
    }
