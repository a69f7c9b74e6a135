"""The export folder's README.md: what the files are, the parity and latency measured, and a short onnxruntime
inference example (tests run the example's code as written)."""

from __future__ import annotations

# Casts the processor's numpy arrays to the dtypes the graph declares (attention masks may come as int32).
_FEED = (
    'DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32, '
    '"tensor(bool)": np.bool_}\n'
    "def feed(session, inputs):\n"
    "    return {i.name: np.asarray(inputs[i.name]).astype(DTYPES[i.type]) for i in session.get_inputs()}\n"
)

_LOAD_IMAGE = 'batch = processor(images=[Image.open(INPUT).convert("RGB")], return_tensors="np")\n'
_LOAD_AUDIO = (
    'audio, rate = sf.read(INPUT, dtype="float32", always_2d=True)  # (samples, channels)\n'
    'extractor = getattr(processor, "feature_extractor", processor)\n'
    "audio = soxr.resample(audio.mean(axis=1), rate, extractor.sampling_rate)\n"
    'batch = extractor([audio], sampling_rate=extractor.sampling_rate, return_tensors="np")\n'
)


def example_code(export_dir: str, kind: str, modality: str) -> str:
    """Python that loads the export in `export_dir` and runs it on one file (`INPUT`)."""
    image = modality == "image"
    imports = "import json\n" if kind != "dual-encoder" else ""
    imports += "import numpy as np\nimport onnxruntime as ort\n"
    imports += "from PIL import Image\n" if image else "import soundfile as sf\nimport soxr\n"
    imports += "from transformers import AutoProcessor\n\n"
    head = f"EXPORT_DIR = {export_dir!r}\nINPUT = {'photo.jpg' if image else 'clip.wav'!r}\n"
    head += "processor = AutoProcessor.from_pretrained(EXPORT_DIR)\n"
    load = _LOAD_IMAGE if image else _LOAD_AUDIO
    if kind != "dual-encoder":
        body = (
            'session = ort.InferenceSession(f"{EXPORT_DIR}/model.onnx", providers=["CPUExecutionProvider"])\n'
            'id2label = json.load(open(f"{EXPORT_DIR}/labels.json"))["id2label"]\n'
            + load
            + "logits = session.run(None, feed(session, batch))[0]\n"
            + "print(id2label[str(int(logits[0].argmax()))], logits[0].max())\n"
        )
    else:
        body = (
            f'media = ort.InferenceSession(f"{{EXPORT_DIR}}/{modality}_tower.onnx", providers=["CPUExecutionProvider"])\n'
            'text = ort.InferenceSession(f"{EXPORT_DIR}/text_tower.onnx", providers=["CPUExecutionProvider"])\n'
            + load
            + "media_embeds = media.run(None, feed(media, batch))[0]  # (1, dim), unit length\n"
            + 'texts = ["a photo of a cat.", "a photo of a dog."]\n'
            + 'tokens = processor.tokenizer(texts, padding=True, return_tensors="np")\n'
            + "text_embeds = text.run(None, feed(text, tokens))[0]  # (2, dim), unit length\n"
            + "print(dict(zip(texts, (media_embeds @ text_embeds.T)[0])))  # cosine similarities\n"
        )
    return imports + _FEED + head + body


def write_readme(path: str, export_dir: str, checkpoint, report: dict) -> str:
    code = example_code(export_dir, checkpoint.kind, checkpoint.modality)
    lines = [f"# ONNX export of `{report['checkpoint']}`", ""]
    for name, file in report["files"].items():
        info = file
        axes = ", ".join(f"`{k}` {v}" for k, v in info["inputs"].items())
        lines.append(f"- `{name}.onnx`: inputs {axes} -> `{info['output']}` {info['output_shape']}")
    lines += [
        f"- processor config (load with `AutoProcessor.from_pretrained`){', `labels.json` (id2label)' if checkpoint.kind != 'dual-encoder' else ''}, "
        "`export_report.json` (parity and latency)",
        "",
        "Dual-encoder towers output unit-length embeddings: their dot product is the cosine similarity."
        if checkpoint.kind == "dual-encoder"
        else "Logits include the run's calibration temperature, if it saved one.",
        "",
        f"## Checked against PyTorch (fp32, CPU, {report['threads']} thread(s), median ms)",
        "",
        "| file | batch | max abs diff | PyTorch ms | ONNX Runtime ms |",
        "|---|---|---|---|---|",
    ]
    for name, file in report["files"].items():
        for batch, diff in file["max_abs_diff"].items():
            lat = file["latency"].get(batch, {})
            lines.append(
                f"| {name} | {batch} | {diff:.2e} | {lat.get('pytorch_ms', '-')} | {lat.get('onnxruntime_ms', '-')} |"
            )
    lines += ["", "## Inference with onnxruntime", "", "```python", code.rstrip("\n"), "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return code
