"""`python -m mm_hf.predict`: a trained checkpoint over a folder, data files or a Hub split, one row per sample.

    python -m mm_hf.predict out/clip_lora --data photos/ --output preds.jsonl --top_k 3
    python -m mm_hf.predict openai/clip-vit-base-patch32 --labels cat,dog,bird --data photos.csv \
        --image_column file --keep_columns file,source --output preds.csv
    python -m mm_hf.predict out/fusion --data items.jsonl --id_column item_id --output preds.jsonl
    python -m mm_hf.predict out/video_cls --data clips.csv --keep_columns video --output preds.jsonl
    python -m mm_hf.predict out/clip_lora --data 'shards/*.tar' --image_column jpg --id_column __key__ --streaming \
        --output preds.jsonl

Checkpoints (told apart as `python -m mm_hf.evaluate` does, by mm_hf.evaluate.candidates): mm-hf image/audio
classifier output folders (full, merged or LoRA adapter), plain transformers image/audio-classification
checkpoints, CLIP/SigLIP/CLAP dual encoders zero-shot over `--labels`, and mm-hf fusion and video checkpoints
(recipes/fusion_imagetext_cls.py, video_cls.py), which read the columns their run recorded in run_config.yaml (any
number of tasks; multi-label and binary heads use `--threshold`, default the run's own). A video run's frames and,
with --audio_from_video, its sound track are decoded from the video column by the run's saved processor; a blank
media or text cell is a missing modality (the model's placeholder, as in the recipe), a video that is not there or
does not decode an error row.

Data: a folder of media files, CSV/JSONL/parquet files or WebDataset `.tar` shards (a glob: 'shards/*.tar'; a shard's
media column is its extension, e.g. `--image_column png`, and `--id_column __key__` names samples by their key), or a
Hub split (`--dataset_name`). `--streaming` reads the files/shards or the Hub split as a stream (the recipes' reader,
`mm_hf.data.streaming.read_files`): rows are read, predicted and appended chunk by chunk without loading the dataset,
a rerun skips the rows whose id the output holds (as without it), and the predictions are those of the map-style
pass. It runs in one process (a stream has no length to cut into shards; DataLoader workers share the decoding).

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
