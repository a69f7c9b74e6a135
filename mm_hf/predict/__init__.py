"""`python -m mm_hf.predict`: a trained checkpoint over a folder, a CSV/JSONL file or a Hub split, one row per sample.

    python -m mm_hf.predict out/clip_lora --data photos/ --output preds.jsonl --top_k 3
    python -m mm_hf.predict openai/clip-vit-base-patch32 --labels cat,dog,bird --data photos.csv \
        --image_column file --keep_columns file,source --output preds.csv
    python -m mm_hf.predict out/fusion --data items.jsonl --id_column item_id --output preds.jsonl

Checkpoints (told apart as `python -m mm_hf.evaluate` does, by mm_hf.evaluate.candidates): mm-hf image/audio
classifier output folders (full, merged or LoRA adapter), plain transformers image/audio-classification
checkpoints, CLIP/SigLIP/CLAP dual encoders zero-shot over `--labels`, and mm-hf fusion and video checkpoints
(recipes/fusion_imagetext_cls.py, video_cls.py), which read the columns their run recorded in run_config.yaml (any
number of tasks; multi-label and binary heads use `--threshold`, default the run's own). A video run's frames and,
with --audio_from_video, its sound track are decoded from the video column by the run's saved processor; a blank
media or text cell is a missing modality (the model's placeholder, as in the recipe), a video that is not there or
does not decode an error row.

Sharded: `accelerate launch [--multi_gpu --num_processes N] -m mm_hf.predict ...`: each process predicts a
contiguous shard of the samples not yet in the output into `<output stem>.part-<rank>-of-<N><ext>`, and the main
process appends the parts in rank order (then deletes them), so the file equals one process's. Parts a crashed
sharded run left behind are merged (by id, never twice) at the next start.

Each output row: `id` (a folder's file path relative to it; else `--id_column`'s value or the row number), the
`--keep_columns`, the prediction fields of `mm_hf.predict.heads` (single-label: `label`, `score`, `top_k`; multi-label:
`labels`, `scores`; binary: `label`, `probability`; regression: `values`), and `error`: null, or why the sample could
not be read (its prediction fields are then empty; the run goes on). In CSV, `top_k` becomes `label_1`, `score_1`,
..., dicts become `key.sub` columns and lists JSON. Rows are in input order and appended every `--chunk_size`
samples; rerunning the same command resumes (samples whose id is in the output are skipped; see `output.py`).
"""

from .cli import main

__all__ = ["main"]
