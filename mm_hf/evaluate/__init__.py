"""`python -m mm_hf.evaluate`: several image or audio classifiers side by side on exactly the same samples.

    python -m mm_hf.evaluate --model zeroshot=openai/clip-vit-base-patch32 --model lora=out/lora \
        --model full=out/full --test_dir data/test --ood sketches=data/sketch_test \
        --calibration_data data/validation --corruptions all --severities 1,3,5 --output_dir eval

Models (`--model NAME=PATH`, repeatable): mm-hf recipe output folders (full, merged or LoRA adapter), plain
transformers image/audio-classification checkpoints, and CLIP/SigLIP/CLAP dual encoders evaluated zero-shot from
class prompts. Fusion and video checkpoints (any number of heads) go through `fusion.py` (see there; their evaluation.json has
`modality: "fusion"`, per set `metrics` from compute_task_metrics, `missing_modality.<modality>` and
`missing_modality_relative.<modality>`, and with --corruptions (of the image/text/audio columns; a video column's
decoded frames take the image ones) `corruptions.<name>.<severity>` (the headline metric),
`corruption_metrics` (all of them) and `robustness`; a multi-task model's metrics are `<task>_`-prefixed, as the recipe's
`test_<task>_*`, and `headline` names the one summarising it; calibration keys as below, see `fusion.py`). With --retrieval, dual encoders are scored on media-caption
retrieval instead (`retrieval.py`: `modality: "retrieval"`, per model `sets.test.metrics` from
`mm_hf.retrieval.evaluate_retrieval`, and with --corruptions (image/audio ones on the items, typos/word_dropout on
the captions) `corruption_targets.<name>` ("image" | "audio" | "text": the side corrupted), `corruption_metrics.<name>.
<severity>` (all retrieval metrics), `corruptions.<name>.<severity>.<metric>` and `robustness.<metric>` (the
summary below) for the four Recall@1/5 of both directions). The test set is given with the
recipes' data flags (--test_dir / --test_file / --dataset_name, --image_column / --audio_column / --label_column).

Sharded: `accelerate launch [--multi_gpu --num_processes N] -m mm_hf.evaluate ... [--device cpu]` (gloo on CPU):
each process scores a contiguous shard of every set, and every sample is counted once: a classifier's logits are
gathered per batch (the padding that evens the shards out is dropped by sample index, `scoring.score`), a fusion
checkpoint's per-head outputs per pass (`fusion.head_outputs`: each set, modality missing, corruption and severity,
the calibration set) and a dual encoder's item and caption embeddings per pass (`mm_hf.retrieval.evaluate_retrieval`),
both in row order through `mm_hf.feature_cache.shared_pass`. evaluation.json and the predictions equal a single
process's (tested with 2 processes for each kind); the main process times latency and writes every output.

Outputs in --output_dir: `evaluation.json`, `evaluation.md` (side-by-side tables), `predictions/<set>.csv` (label
and each model's prediction per sample, in evaluation order) and `plots/` (reliability diagram per model,
accuracy vs severity per corruption with one line per model, ID vs OOD accuracy, per-class F1 bars).

evaluation.json keys (schema_version 1; stable: new keys may be added, these keep their meaning):
- `schema_version`, `command`, `modality` ("image" | "audio"), `label_names` (the evaluation's class order),
  `device`, `processes` (1, or the number of processes of an `accelerate launch` that sharded every set),
  `plots` (paths relative to --output_dir);
- `sets.<set>`: `source`, `samples`, `skipped_bad_samples` for "test" and each --ood name;
- `corruptions`: null, or `{"names", "severities", "seed"}`;
- `models.<name>`: `path`, `kind` ("mm-hf" | "transformers" | "zero-shot"), `saved_as` ("full" | "merged" | "adapter"),
  - `sets.<set>`: `samples`; `metrics` (accuracy, top5_accuracy when there are more than 5 classes, macro_f1,
    weighted_f1, macro_precision, macro_recall: the numbers the recipes report as `test_*`);
    `confidence_intervals.<metric>` `{estimate, low, high, confidence}` (95 % percentile bootstrap);
    `per_class.<label>` `{precision, recall, f1, support}`; `confusion_matrix` (rows true, columns predicted);
    `calibration` `{ece (15 bins), mce, nll, brier, accuracy, confidence, reliability}`;
    `calibration_temperature_scaled` (with --calibration_data: the same after dividing logits by `temperature`);
    `gap` (OOD sets) `{accuracy_minus_test, relative_to_test}`; `effective_robustness` (OOD sets, when there is a
    baseline line) `{value, expected_accuracy}`: OOD accuracy minus the line's at this model's test accuracy;
  - `temperature_scaling` (with --calibration_data): `{temperature, before, after, samples}` on that set, and with
    --save_temperature `saved_to` (the config.json now holding `calibration_temperature`; null: not an mm-hf model);
  - `corruptions.<name>.<severity>`: accuracy on the corrupted test set; `robustness`: `mean_corruption_accuracy`,
    `relative_accuracy`, `area_under_curve`, `per_corruption`, and `effective_robustness` (+
    `effective_robustness_baseline`) against the first zero-shot model when there is one;
  - `card` (with --update_card): the README.md whose model-index got the results (null: not a local mm-hf folder);
  - `cost`: `total_params`, `requires_grad_params`, `trainable_params` (what fine-tuning trained: the run's record,
    0 for zero-shot), `disk_bytes` (weight files in the folder; an adapter's own, with `base_model`),
    `latency.batch_<1|32>` `{p50_s, p95_s, throughput_per_s}`, `peak_rss_bytes` (and `peak_gpu_allocated_bytes`);
- `effective_robustness_lines.<ood set>` (null without baseline models or --ood): the baseline ID -> OOD line of
  Taori et al. 2020 / Radford et al. 2021, `logit(ood) = slope * logit(test) + intercept`, `{slope, intercept, fit
  ("least_squares" over several baseline models | "slope_1_through_point" for one), points, models}`; the baseline
  models are --robustness_baseline, else every zero-shot model;
- `paired_tests.<set>."<A> vs <B>"`: `mcnemar` `{a_only, b_only, p_value, p_value_b_better}`,
  `paired_bootstrap_accuracy` / `paired_bootstrap_macro_f1` `{estimate_a, estimate_b, difference, p_value}`;
- `failed.<name>`: why a model could not be loaded (the others are still evaluated).

Fusion/video and --retrieval evaluations carry the same three keys, computed on the main process from the gathered
outputs (`scoring.py`, `cost.py`); every interval there adds `resampled` ("rows" | "groups" | "queries") and `units`:
- fusion `models.<name>.sets.<set>.confidence_intervals.<metric>`: the headline metric of each head, plus accuracy and
  macro_f1 of single-label heads (accuracy of a binary one, macro_f1 of a multi-label one), keyed as `metrics`
  (`<task>_`-prefixed for several heads); rows resampled, a ranking head's groups (`ndcg@<largest K>`, `mrr`, each
  group's value resampled; groups without a relevant row are not ranked, as in the metrics);
  `paired_tests.<set>."<A> vs <B>"`: `mcnemar` (`mcnemar_<task>` with several heads; single-label heads) and
  `paired_bootstrap_<metric key>` `{estimate_a, estimate_b, difference, p_value}` (one-sided "B beats A"; for rmse
  "B lower"); `models.<name>.cost` as a classifier's (latency on real test batches through the model's processor);
- retrieval `models.<name>.sets.test.confidence_intervals.<recall key>` for the four Recall@1/5 (`recall_keys`:
  the queries resampled, the gallery whole: items for <media>_to_text, captions for text_to_<media>);
  `paired_tests.test."<A> vs <B>".paired_bootstrap_<recall key>`; `models.<name>.cost`: `total_params`,
  `requires_grad_params`, `trainable_params`, `disk_bytes`, `towers.<image|audio|text>` `{params, latency.batch_<1|32>
  {p50_s, p95_s, throughput_per_s}}` (embedding a batch of real test items / captions), `peak_rss_bytes`.
With `--latency_runs 0` no `latency` key is written, in every mode.
"""

from .cli import main

__all__ = ["main"]
