"""Multimodal sentiment: a speaker's voice, words and face, where the words alone are ambiguous on purpose.

    python -m mm_hf.apps.sentiment build --output_dir demo_out/sentiment       # clips, splits, encoders
    accelerate launch recipes/video_cls.py --config recipes/configs/sentiment.yaml
    python -m mm_hf.apps.sentiment ablate --config recipes/configs/sentiment.yaml  # one modality per run + table

(`make demo-sentiment` runs the three.) The fused model is recipes/video_cls.py: frames of the face through a vision
encoder pooled over time, the clip's own sound track (`--audio_from_video`) through an audio encoder, the transcript
through a text encoder, one 3-class head (negative / neutral / positive). `ablate` trains the same settings on each
modality alone and prints one table: before/after training, the fused model with each modality removed at test
time (the missing-modality table), and each single-modality model, with per-class F1.

Data layout: CMU-MOSEI / CMU-MOSI as the MMSA toolkit distributes them, which `build` writes and `prepare` reads:

    <data_dir>/Raw/<video_id>/<clip_id>.mp4   one utterance: the speaker's face and voice
    <data_dir>/label.csv                      video_id, clip_id, text (the transcript), label (sentiment score in
                                              [-3, 3]), annotation (Negative / Neutral / Positive), mode (train /
                                              valid / test); other columns are carried along

`prepare` turns that into the recipes' rows, `<output_dir>/{train,validation,test}.jsonl` with columns `video`
(path relative to the file), `audio` (the sound track extracted to `audio/<video_id>/<clip_id>.wav`, for the
audio-only run), `transcript`, `label` (the annotation, else the score's sign: < 0 negative, 0 neutral, > 0 positive,
MOSEI's 3-class convention) and `sentiment` (the score), so the same commands run on the real data:

    python -m mm_hf.apps.sentiment prepare --data_dir MOSEI --output_dir mosei_rows
    # a copy of recipes/configs/sentiment.yaml with its files, encoders and output_dir pointed at yours: mosei.yaml
    accelerate launch recipes/video_cls.py --config mosei.yaml
    python -m mm_hf.apps.sentiment ablate --config mosei.yaml

The synthetic clips (`write_sentiment_clips`): espeak-ng speaks a sentence, PIL draws a face. A sentence is either
praise ("what a wonderful day") or a plain statement ("the meeting moved to friday"); the voice is sincere or
sarcastic (slower, higher, the key word stressed with SSML); the face smiles, stays neutral or rolls its eyes.
Sarcasm in the voice or an eye-roll makes the utterance negative (irony), whatever the words say; otherwise praise
or a smile is positive and a plain statement with a neutral face neutral. The seven combinations in `IRONY_CASES`, with
their weights, balance the three classes and leave every modality alone far from the answer: the best possible
accuracy from the words alone is 0.56, from the voice alone 0.56, from the face alone 0.67 (`best_accuracy`), while
all three together determine the label.

Modules: `clips` (the synthetic clips and their generating factors), `layout` (MMSA rows -> the recipes' JSONL),
`encoders` (offline stand-in encoders), `ablation` (single-modality runs and the table), `cli`.
"""
