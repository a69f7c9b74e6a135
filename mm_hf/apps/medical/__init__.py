"""Medical imaging with the patient's record: a chest radiograph, the report's clinical indication and lab values
-> multi-label findings, trained with recipes/fusion_imagetext_cls.py (recipes/configs/medical.yaml).

- `layout`: the MIMIC-CXR-style folders and tables (the expected columns) and `prepare`, which joins them into the
  recipe's JSONL splits;
- `synthetic`: a small offline dataset in that layout whose findings need the modalities together;
- `report`: per-finding ROC-AUC and average precision of a trained run, with each modality removed and alone.

    python -m mm_hf.apps.medical demo --output_dir demo_out      # synthetic layout + JSONL splits + encoders
    accelerate launch recipes/fusion_imagetext_cls.py --config recipes/configs/medical.yaml
    python -m mm_hf.apps.medical report demo_out/medical_run --test_file demo_out/medical/data/test.jsonl
"""
