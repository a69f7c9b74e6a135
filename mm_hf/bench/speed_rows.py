"""One row of `make bench` (mm_hf.bench.speed), measured in its own interpreter: the step timer that splits a
Trainer step into waiting for data and compute, peak memory, and the two kinds of child run (a recipe through its
`main`, or a baseline: the article's plain loop or a stock Trainer with the example scripts' preprocessing)."""

import os
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from mm_hf.data.audio import load_audio
from mm_hf.models.audio_classifier import fit_whisper_window

from .baselines import examples_image_augment, load_rgb
from .memory import NUM_CLASSES, peak_rss_mb
from .runs import load_recipe

# Timing ---------------------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Each optimizer step's wall time split into waiting for data and compute.

    Waiting runs from the end of the previous step (or the start of training) to the start of this one: Trainer
    fetches the step's batches from the DataLoader iterator there (`get_batch_samples`), after the previous step's
    logging. Compute runs from the start of the step to its end: forward, backward, optimizer. A plain loop calls
    `train_begin`/`step_begin`/`step_end` itself at the same points.

    Trainer's loader (accelerate's DataLoaderShard) reads one batch ahead: the first step fetches two batches, each
    later one the next, and an epoch's last step none. So the first step is left out (`summary`), and a timed
    training split holds more batches than the steps, or some measured step would be an epoch's last."""

    def __init__(self, clock=time.perf_counter, sync=None):
        # On an accelerator the step's kernels are only queued when the host moves on: `sync` (e.g.
        # torch.cuda.synchronize) waits for them at each boundary, so compute is not counted as the next wait.
        self.clock, self.sync = clock, sync or (lambda: None)
        self.waits, self.computes = [], []
        self.samples_per_step = None
        self._last = self._begin = None

    def train_begin(self, samples_per_step: int | None = None):
        self.samples_per_step = samples_per_step or self.samples_per_step
        self._last = self.clock()

    def step_begin(self):
        self.sync()
        self._begin = self.clock()
        self.waits.append(self._begin - self._last)

    def step_end(self):
        self.sync()
        self._last = self.clock()
        self.computes.append(self._last - self._begin)

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin(args.train_batch_size * args.gradient_accumulation_steps * args.world_size)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end()

    def summary(self, skip_first: int = 1) -> dict:
        """Steady-state figures over the steps after the first `skip_first` (DataLoader start-up, lazy init);
        `first_step_s` is what those took."""
        waits, computes = self.waits[skip_first:], self.computes[skip_first:]
        if not waits or not computes or self.samples_per_step is None:
            return {"steps": len(self.computes)}
        wait, compute = sum(waits), sum(computes)
        samples = self.samples_per_step * len(computes)
        return {
            "steps": len(computes),
            "samples_per_step": self.samples_per_step,
            "train_samples_per_s": samples / (wait + compute),
            "data_wait_fraction": wait / (wait + compute),
            "wait_s_per_step": wait / len(waits),
            "compute_s_per_step": compute / len(computes),
            "pipeline_samples_per_s": samples / wait if wait > 0 else None,
            "first_step_s": sum(self.waits[:skip_first]) + sum(self.computes[:skip_first]),
        }


def device_timer() -> StepTimer:
    return StepTimer(sync=torch.cuda.synchronize if torch.cuda.is_available() else None)


def peak_memory() -> dict:
    out = {"peak_rss_mb": round(peak_rss_mb())}
    if torch.cuda.is_available():
        out["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


# Children: one row each ---------------------------------------------------------------------------------------


def run_recipe_child(recipe: str, argv: list[str]) -> dict:
    """`recipes/<recipe>.py main(argv)` with a StepTimer on its Trainer's training; the cached linear probe's
    feature pass (`classifier_datasets`) is timed too."""
    module = load_recipe(recipe)
    timer, spent = device_timer(), {}
    train = Trainer.train

    def timed_train(self, *args, **kwargs):
        self.add_callback(timer)
        return train(self, *args, **kwargs)

    Trainer.train = timed_train
    if hasattr(module, "classifier_datasets"):
        build = module.classifier_datasets

        def timed_build(*args, **kwargs):
            start = time.perf_counter()
            try:
                return build(*args, **kwargs)
            finally:
                spent["datasets_s"] = time.perf_counter() - start

        module.classifier_datasets = timed_build
    start = time.perf_counter()
    results = module.main(argv)
    report = {"wall_s": time.perf_counter() - start, **timer.summary(), **peak_memory()}
    report["eval_samples_per_s"] = eval_speed(results)
    if not timer.computes and results.get("train_runtime"):  # L-BFGS on cached features: pass + fit, end to end
        seconds = results["train_runtime"] + spent.get("datasets_s", 0.0)
        report["train_samples_per_s"] = results["train_samples"] / seconds
        report["notes"] = (
            f"feature pass {spent.get('datasets_s', 0):.1f} s + L-BFGS fit {results['train_runtime']:.1f} s"
        )
    return report


def eval_speed(results: dict) -> float | None:
    """Samples/s of the evaluation after training (Trainer's `<split>_samples_per_second`), test split first."""
    for prefix in ("test_", "eval_"):
        if f"{prefix}samples_per_second" in results:
            return results[f"{prefix}samples_per_second"]
    return None


def run_baseline_child(kind: str, spec: dict) -> dict:
    """The plain loop (`kind="plain"`) or the example scripts' pipeline in a stock Trainer (`"examples"`)."""
    torch.manual_seed(0)
    model, processor, inputs = tower_classifier(spec["modality"], spec["model"], spec.get("max_length_seconds"))
    files = {split: labelled_files(os.path.join(spec["data"], split)) for split in ("train", "test")}
    load = sample_loader(spec["modality"], processor, inputs, spec.get("max_length_seconds"))
    augment = None
    if kind == "examples":
        # run_image_classification's crop + flip; run_audio_classification's random window (`random_subsample`)
        augment = examples_image_augment(processor) if spec["modality"] == "image" else True
    train_set = FileDataset(files["train"], load, augment)
    test_set = FileDataset(files["test"], load)
    timer = device_timer()
    start = time.perf_counter()
    if kind == "plain":
        loader = DataLoader(train_set, batch_size=spec["batch_size"], shuffle=True, num_workers=0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"])
        model.train()
        timer.train_begin(spec["batch_size"])
        batches = iter(loader)
        for _ in range(spec["steps"]):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            timer.step_begin()  # the copy to the device is in the step, as in Trainer's training_step
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.step_end()
        eval_start, count = time.perf_counter(), 0
        model.eval()
        with torch.no_grad():
            for batch in DataLoader(test_set, batch_size=spec["eval_batch_size"], num_workers=0):
                model(**{k: v.to(device) for k, v in batch.items()})
                count += len(batch["labels"])
        eval_speed_ = count / (time.perf_counter() - eval_start)
    else:
        args = TrainingArguments(
            output_dir=spec["output_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["eval_batch_size"], learning_rate=spec["learning_rate"],
            report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train_set, callbacks=[timer])
        trainer.train()
        eval_speed_ = trainer.evaluate(test_set)["eval_samples_per_second"]
    report = {"wall_s": time.perf_counter() - start, **timer.summary(), **peak_memory()}
    return {**report, "eval_samples_per_s": eval_speed_}


def labelled_files(folder: str) -> list[tuple[str, int]]:
    """(path, label) of every file in the class folders under `folder`, classes in sorted order."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    return [
        (os.path.join(folder, name, file), label)
        for label, name in enumerate(classes)
        for file in sorted(os.listdir(os.path.join(folder, name)))
    ]


class FileDataset:
    """Map-style dataset of (path, label): `load(path, augment)` gives the model inputs of one sample."""

    def __init__(self, files, load, augment=None):
        self.files, self.load, self.augment = files, load, augment

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path, label = self.files[index]
        return {**self.load(path, self.augment), "labels": torch.tensor(label)}


def sample_loader(modality: str, processor, inputs: str, max_length_seconds: float | None):
    """`load(path, augment)`: one image through `augment` (if any) and the processor, or one clip's window (the
    first, or a random one for the example script's `random_subsample`) through the feature extractor."""
    if modality == "image":

        def load(path, augment):
            image = load_rgb(path)
            image = augment(image) if augment else image
            return {inputs: processor(images=image, return_tensors="pt")[inputs][0]}

        return load

    rate = processor.sampling_rate
    size = int(max_length_seconds * rate)

    def load(path, augment):
        clip = load_audio(path, rate)
        start = random.randint(0, max(0, len(clip) - size)) if augment else 0
        clip = np.pad(clip[start : start + size], (0, max(0, size - len(clip[start:]))))[:size]
        return {inputs: processor(clip, sampling_rate=rate, return_tensors="pt")[inputs][0]}

    return load


def tower_classifier(modality: str, model_dir: str, max_length_seconds: float | None = None):
    """(model, processor, input name): the recipe's backbone as the plain loop uses it: a dual encoder's image
    tower + projection, or an audio encoder (Whisper's encoder on the recipe's window) mean-pooled over frames;
    then a linear head. `model(**batch)` returns a ModelOutput with `loss` and `logits`."""
    backbone = AutoModel.from_pretrained(model_dir)
    if modality == "image":
        processor = AutoImageProcessor.from_pretrained(model_dir)
        tower = nn.ModuleDict({"vision": backbone.vision_model, "projection": backbone.visual_projection})
        dim, inputs = backbone.visual_projection.out_features, "pixel_values"

        def features(x):
            return tower["projection"](tower["vision"](pixel_values=x).pooler_output)
    else:
        processor = AutoFeatureExtractor.from_pretrained(model_dir)
        encoder = getattr(backbone, "encoder", backbone) if hasattr(backbone, "decoder") else backbone
        fit_whisper_window(encoder, encoder.config, processor, max_length_seconds)
        tower, dim, inputs = encoder, encoder.config.hidden_size, processor.model_input_names[0]

        def features(x):
            return tower(x).last_hidden_state.mean(1)

    class TowerClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower, self.head = tower, nn.Linear(dim, NUM_CLASSES)

        def forward(self, labels=None, **batch):
            logits = self.head(features(batch[inputs]))
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    del backbone  # the text tower / decoder: the plain loop never loads what it does not train
    torch.manual_seed(0)
    return TowerClassifier(), processor, inputs
