"""Export for serving: `python -m mm_hf.export CHECKPOINT --format onnx --output_dir DIR`.

Image and audio classifiers (an mm-hf run's output folder: full, merged, or a LoRA adapter merged here; or a plain
transformers image/audio-classification checkpoint) become `model.onnx` (inputs as the processor names them ->
`logits`); a CLIP/SigLIP/CLAP/VisionTextDualEncoder dual encoder becomes `image_tower.onnx` (or `audio_tower.onnx`)
and `text_tower.onnx`, each ending in its projection and a unit-length embedding. The batch axis is dynamic, and so
is the length of token ids and raw waveforms. Each graph is run with onnxruntime against the PyTorch model (max
abs difference at every `--batch_sizes`, refused above `--tolerance`) and both are timed on the CPU. The folder
also holds the processor config, `labels.json`, `export_report.json` and a README with an onnxruntime example.
"""

from .cli import ExportArguments, main

__all__ = ["ExportArguments", "main"]
