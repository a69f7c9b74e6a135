"""mm_hf/probe.py: the L-BFGS linear probe against scikit-learn, its C selection, and the recipes' linear_probe path."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_recipe
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import (
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoProcessor,
)

import mm_hf.models  # noqa: F401  (registers the Auto classes)
from mm_hf.data.audio import AudioTransform
from mm_hf.data.transforms import build_image_transform
from mm_hf.demo import write_tones_audiofolder
from mm_hf.errors import UserError
from mm_hf.models.modeling_audio_classifier import AudioClassifierForAudioClassification
from mm_hf.models.modeling_clip_classifier import CosineClassifierHead
from mm_hf.probe import (
    AUTO_CV_BELOW_VALIDATION_ROWS,
    DEFAULT_C_GRID,
    SELECT_TOL,
    LinearFit,
    cross_validate,
    fit_logistic_regression,
    select_and_fit,
    stratified_folds,
    write_head,
)


def tensors(*arrays):
    return [torch.as_tensor(a) for a in arrays]


@pytest.fixture(scope="module")
def blobs():
    x, y = make_classification(
        n_samples=500, n_features=30, n_informative=8, n_classes=4, n_clusters_per_class=1, random_state=0
    )
    return x[:350], y[:350], x[350:], y[350:]


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_solver_matches_sklearn_logistic_regression(blobs, C):
    x_train, y_train, x_test, y_test = blobs
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x_train, y_train)
    fit = fit_logistic_regression(*tensors(x_train, y_train), C)
    assert fit.converged and fit.n_iter > 0
    probabilities = fit.logits(torch.as_tensor(x_test)).softmax(-1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(x_test), atol=2e-4)
    assert (probabilities.argmax(1) == y_test).mean() == pytest.approx(reference.score(x_test, y_test))


def test_warm_start_reaches_the_same_optimum_in_fewer_iterations(blobs):
    x_train, y_train, _, _ = blobs
    cold = fit_logistic_regression(*tensors(x_train, y_train), 1.0)
    warm = fit_logistic_regression(
        *tensors(x_train, y_train), 1.0, init=fit_logistic_regression(*tensors(x_train, y_train), 0.5)
    )
    torch.testing.assert_close(warm.weight, cold.weight, atol=1e-4, rtol=1e-4)
    assert warm.n_iter < cold.n_iter


def label_noise_in_many_tiny_dimensions(rng, n):
    # One informative feature, 500 tiny noise features and 20% flipped labels: a weak penalty lets the fit chase
    # the flips through the noise features.
    y = rng.integers(0, 2, n)
    x = np.concatenate([2.0 * (2 * y[:, None] - 1) + rng.normal(size=(n, 1)), 0.1 * rng.normal(size=(n, 500))], 1)
    return x, np.where(rng.random(n) < 0.2, 1 - y, y)


def signal_under_a_measured_nuisance(rng, n):
    # The class shifts feature 0, under a nuisance 10x larger that feature 1 measures: only large weights
    # (x0 - x1) recover it, which a strong penalty forbids.
    y = rng.integers(0, 3, n)
    nuisance = rng.normal(scale=10.0, size=n)
    return np.stack([y + 0.1 * rng.normal(size=n) + nuisance, nuisance, rng.normal(size=n)], 1), y


def test_c_selection_regularises_noisy_data_and_frees_clean_data():
    # Unstandardised: these cases are built on the features' scales (standardising would blow up the tiny noise).
    rng = np.random.default_rng(0)
    noisy = select_and_fit(
        *tensors(*label_noise_in_many_tiny_dimensions(rng, 40), *label_noise_in_many_tiny_dimensions(rng, 200)),
        standardize=False,
        selection="validation",
    )
    clean = select_and_fit(
        *tensors(*signal_under_a_measured_nuisance(rng, 150), *signal_under_a_measured_nuisance(rng, 200)),
        standardize=False,
        selection="validation",
    )
    assert noisy.selection == "validation" and len(noisy.grid) == len(DEFAULT_C_GRID)
    # In the features' own units (scikit-learn's C): noisy 0.08 and clean 99 on this seed.
    assert noisy.C <= 1.0 and clean.C >= 50.0, (noisy.C, clean.C)
    # Each choice pays off on held-out data against the other end of the grid.
    assert max(noisy.held_out_accuracy) >= noisy.held_out_accuracy[-1] + 0.04
    assert max(clean.held_out_accuracy) >= clean.held_out_accuracy[0] + 0.5
    # Without a validation split, cross-validation on train lands on the same side.
    cv = select_and_fit(*tensors(*signal_under_a_measured_nuisance(rng, 150)), folds=3, standardize=False)
    assert cv.selection == "3-fold cross-validation on train" and cv.C >= 50.0


def test_a_small_validation_split_is_pooled_with_train_to_choose_c_and_the_head_trains_on_train():
    rng = np.random.default_rng(3)
    (x_train, y_train), (x_val, y_val) = (label_noise_in_many_tiny_dimensions(rng, n) for n in (60, 20))
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    auto = select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=grid, standardize=False)
    assert auto.selection == "5-fold cross-validation on train + validation"
    # The held-out accuracies are 5-fold cross-validation's over all 80 rows (the validation rows take part) ...
    pooled, losses, _ = cross_validate(
        *tensors(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])), auto.grid, 2, 5, 0, tol=SELECT_TOL
    )
    np.testing.assert_allclose(auto.held_out_accuracy, pooled)
    assert auto.C == auto.grid[int(np.argmin(losses))]  # the lowest cross-validated log-loss
    train_only = select_and_fit(*tensors(x_train, y_train), grid=grid, standardize=False)
    assert train_only.selection == "5-fold cross-validation on train"
    assert train_only.held_out_accuracy != auto.held_out_accuracy
    # ... but the head is the fit on the training rows alone at the chosen C: validation never trains it.
    on_train = fit_logistic_regression(*tensors(x_train, y_train), auto.C)
    torch.testing.assert_close(auto.fit.weight, on_train.weight, atol=1e-4, rtol=1e-3)
    # --probe_selection validation keeps the validation split's own scores.
    assert select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=grid, selection="validation").selection == (
        "validation"
    )
    with pytest.raises(ValueError, match="selection must be one of"):
        select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=grid, selection="holdout")
    with pytest.raises(UserError, match=r"--probe_selection validation .* this run has none"):
        select_and_fit(*tensors(x_train, y_train), grid=grid, selection="validation")


def test_auto_selection_scores_c_on_a_large_validation_split():
    rng = np.random.default_rng(4)
    (x_train, y_train), (x_val, y_val) = (
        signal_under_a_measured_nuisance(rng, n) for n in (100, AUTO_CV_BELOW_VALIDATION_ROWS)
    )
    large = select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=(0.1, 10.0))
    small = select_and_fit(*tensors(x_train, y_train, x_val[:-1], y_val[:-1]), grid=(0.1, 10.0))
    assert large.selection == "validation" and small.selection.startswith("5-fold cross-validation")


def informative_features_of_small_scale(rng, n):
    # Classes differ along 4 features of std 0.01; 40 features of std 10 carry noise. A penalty on raw weights
    # forbids the large weights the small features need; on standardised features every feature costs the same.
    y = rng.integers(0, 3, n)
    means = np.random.default_rng(42).normal(size=(3, 4))  # the same classes in every split
    signal = 0.01 * (means[y] + 0.5 * rng.normal(size=(n, 4)))
    return np.concatenate([signal, 10.0 * rng.normal(size=(n, 40)) + 50.0], 1), y


def test_standardised_probe_is_scikit_learns_scaler_and_logistic_regression():
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        informative_features_of_small_scale(rng, n) for n in (90, 60, 300)
    )
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    result = select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=grid, selection="validation")
    assert result.grid == grid and result.selection == "validation"
    references = [
        make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000)).fit(x_train, y_train)
        for C in grid
    ]
    # Same validation accuracy at every C, same choice, and the folded-back head gives the pipeline's probabilities
    # on the raw (unscaled) test features.
    assert result.held_out_accuracy == pytest.approx([r.score(x_val, y_val) for r in references])
    chosen = references[grid.index(result.C)]
    probabilities = result.fit.logits(torch.as_tensor(x_test)).softmax(-1).numpy()
    np.testing.assert_allclose(probabilities, chosen.predict_proba(x_test), atol=2e-4)
    # The scaling is what makes the probe work here: the unstandardised problem cannot use the small features.
    raw = select_and_fit(*tensors(x_train, y_train, x_val, y_val), grid=grid, standardize=False)
    test_accuracy = (probabilities.argmax(1) == y_test).mean()
    raw_accuracy = (raw.fit.logits(torch.as_tensor(x_test)).argmax(-1).numpy() == y_test).mean()
    assert test_accuracy >= raw_accuracy + 0.3, (test_accuracy, raw_accuracy)  # 0.67 vs 0.28 (chance 0.33)


def test_standardisation_keeps_constant_features_and_folds_into_both_heads():
    rng = np.random.default_rng(1)
    x, y = informative_features_of_small_scale(rng, 80)
    x[:, 5] = 3.0  # a constant feature: scikit-learn's StandardScaler keeps its scale at 1, so does the probe
    result = select_and_fit(*tensors(x[:60], y[:60], x[60:], y[60:]), grid=(1.0,))
    assert torch.isfinite(result.fit.weight).all() and torch.isfinite(result.fit.bias).all()
    inputs = torch.as_tensor(x[60:])
    linear = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(44, 3)).eval()
    write_head(_Holder(linear), result.fit)
    torch.testing.assert_close(linear(inputs.float()).double(), result.fit.logits(inputs), atol=1e-3, rtol=1e-4)


def test_stratified_folds_deal_every_class_over_the_folds():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 5)
    for cls in range(3):
        counts = np.bincount(folds[labels == cls], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert set(np.bincount(folds)) <= {3, 4}


class _Holder(torch.nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier


def test_write_head_reproduces_the_fit_in_both_head_kinds():
    fit = LinearFit(torch.randn(3, 8, dtype=torch.float64) * 20, torch.randn(3, dtype=torch.float64), 1, True)
    x = torch.randn(5, 8) * 7
    cosine = CosineClassifierHead(8, 3, dropout=0.5, logit_scale=np.log(1 / 0.07), learn_logit_scale=True).eval()
    write_head(_Holder(cosine), fit)
    torch.testing.assert_close(cosine(x), fit.logits(F.normalize(x.double(), dim=-1)).float(), atol=1e-4, rtol=1e-4)
    # A logit scale beyond CLIP's clamp (100) is what forward uses, so it is what the weights are divided by.
    cosine.logit_scale.data.fill_(10.0)
    write_head(_Holder(cosine), fit)
    torch.testing.assert_close(cosine(x), fit.logits(F.normalize(x.double(), dim=-1)).float(), atol=1e-4, rtol=1e-4)
    linear = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).eval()
    write_head(_Holder(linear), fit)
    torch.testing.assert_close(linear(x), fit.logits(x.double()).float(), atol=1e-4, rtol=1e-4)


# ---- recipes ----


def recipe_args(model, out, data, *extra):
    args = [
        "--model_name_or_path", str(model), "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--report_to", "none",
        "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no", "--finetune_strategy", "linear_probe",
    ]  # fmt: skip
    for split, folder in data.items():
        args += [f"--{split}_dir", str(folder)]
    return args + list(extra)


def image_features(model, processor_dir, folder):
    transform = build_image_transform(AutoProcessor.from_pretrained(processor_dir).image_processor, train=False)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    labels = np.array([names.index(os.path.basename(os.path.dirname(p))) for p in paths])
    with torch.no_grad():
        embeds = model.get_image_features(torch.stack(transform({"image": paths})["pixel_values"]))
    return embeds, labels


def test_clip_imagecls_lbfgs_probe_matches_sklearn_and_the_checkpoint_reloads(tiny_vtde, digits_dir, tmp_path):
    recipe = load_recipe("clip_imagecls")
    out = tmp_path / "out"
    data = {split: digits_dir / split for split in ("train", "validation", "test")}
    results = recipe.main(
        recipe_args(
            tiny_vtde, out, data, "--prompt_templates", "a photo of the digit {}.", "--probe_selection", "validation"
        )
    )
    on_disk = json.loads((out / "all_results.json").read_text())
    assert on_disk["probe_solver"] == "lbfgs" and on_disk["probe_selection"] == "validation"
    assert on_disk["probe_converged"] and on_disk["probe_iterations"] > 0 and on_disk["probe_fit_seconds"] > 0
    grid = on_disk["probe_C_grid"]
    assert len(grid) == len(on_disk["probe_held_out_accuracy"]) == len(DEFAULT_C_GRID)
    assert on_disk["train_runtime"] >= on_disk["probe_fit_seconds"]

    # scikit-learn's StandardScaler + LogisticRegression on the same (L2-normalised, as the cosine head sees them)
    # features, C chosen on validation.
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    x = {}
    for split, folder in data.items():
        embeds, labels = image_features(model, out, folder)
        x[split] = (F.normalize(embeds.double(), dim=-1).numpy(), labels)
    # Every other C up to the chosen one (scikit-learn needs many iterations to converge past it on 48 images).
    chosen_index = grid.index(results["probe_C"])
    for i in sorted({*range(0, chosen_index, 2), chosen_index}):
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=grid[i], tol=1e-10, max_iter=10_000))
        reference.fit(*x["train"])
        assert on_disk["probe_held_out_accuracy"][i] == pytest.approx(reference.score(*x["validation"])), grid[i]
    chosen = reference
    # The saved checkpoint's probabilities are scikit-learn's at the chosen C, and so is the reported accuracy.
    with torch.no_grad():
        probabilities = model(image_embeds=image_features(model, out, data["test"])[0]).logits.softmax(-1).numpy()
    np.testing.assert_allclose(probabilities, chosen.predict_proba(x["test"][0]), atol=2e-3)
    assert results["test_accuracy"] == pytest.approx(chosen.score(*x["test"]))
    assert results["test_accuracy"] > results["zeroshot_test_accuracy"] or results["test_accuracy"] == 1.0


def test_refuses_what_the_lbfgs_probe_cannot_do(tiny_vtde, tiny_wav2vec2, digits_dir, tmp_path, capsys):
    clip = load_recipe("clip_imagecls")
    data = {"train": digits_dir / "train"}
    with pytest.raises(ValueError, match=r"--precompute_features false.*--probe_solver trainer"):
        clip.main(recipe_args(tiny_vtde, tmp_path / "a", data, "--precompute_features", "false"))
    with pytest.raises(ValueError, match=r"--early_stopping_patience.*--probe_solver trainer"):
        clip.main(recipe_args(tiny_vtde, tmp_path / "b", data, "--early_stopping_patience", "2"))
    audio = load_recipe("audio_cls")
    with pytest.raises(ValueError, match=r"--pooling attention.*--probe_solver trainer"):
        audio.main(recipe_args(tiny_wav2vec2, tmp_path / "c", {"train": tmp_path}, "--pooling", "attention"))
    with pytest.raises(SystemExit):
        clip.main(recipe_args(tiny_vtde, tmp_path / "d", data, "--probe_solver", "adam"))
    err = capsys.readouterr().err
    assert "--probe_solver" in err and "invalid choice: 'adam'" in err
    assert not any((tmp_path / name).exists() and os.listdir(tmp_path / name) for name in "abcd")


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    write_tones_audiofolder(str(root), per_class=(6, 2, 4), seed=0)
    return {split: root / split for split in ("train", "validation", "test")}


def count_backbone_clips(monkeypatch):
    """Patch the audio classifier so every clip its backbone encodes is counted."""
    calls = []
    original = AudioClassifierForAudioClassification.forward

    def counting(self, *args, **kwargs):
        inputs = kwargs.get("input_values", kwargs.get("input_features"))
        if inputs is not None:
            calls.append(len(inputs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AudioClassifierForAudioClassification, "forward", counting)
    return calls


@pytest.mark.parametrize(("solver", "epochs"), [("lbfgs", "1"), ("trainer", "3")])
def test_audio_linear_probe_encodes_each_clip_once(tiny_wav2vec2, tones, tmp_path, monkeypatch, solver, epochs):
    audio = load_recipe("audio_cls")
    calls = count_backbone_clips(monkeypatch)
    out = tmp_path / "out"
    results = audio.main(
        recipe_args(
            tiny_wav2vec2, out, tones, "--probe_solver", solver, "--num_train_epochs", epochs, "--learning_rate",
            "1e-2", "--max_length_seconds", "0.5", "--augment", "false", "--head_dropout", "0",
        )
    )  # fmt: skip
    # 24 train + 8 validation + 16 test clips through the backbone exactly once, however many epochs.
    assert sum(calls) == 48
    assert results["zeroshot_test_accuracy"] <= 0.5
    if solver == "lbfgs":
        # Chance is 0.25; the converged probe on the mean-pooled frozen frames separates the tones.
        assert results["test_accuracy"] >= 0.6, results
        assert results["probe_solver"] == "lbfgs" and results["probe_C"] in results["probe_C_grid"]
        # 8 validation clips: C is chosen by cross-validation over train + validation (--probe_selection auto).
        assert results["probe_selection"] == "5-fold cross-validation on train + validation"
        # The saved classifier reproduces the reported accuracy from the raw clips (backbone + mean pooling + head).
        model = AutoModelForAudioClassification.from_pretrained(out).eval()
        transform = AudioTransform(AutoFeatureExtractor.from_pretrained(out), max_length_seconds=0.5)
        paths = sorted(str(p) for p in tones["test"].glob("*/*.wav"))
        labels = torch.tensor([model.config.label2id[os.path.basename(os.path.dirname(p))] for p in paths])
        batch = transform({"audio": paths, "labels": labels.tolist()})
        with torch.no_grad():
            logits = model(**{k: torch.stack(v) for k, v in batch.items() if k != "labels"}).logits
        assert (logits.argmax(-1) == labels).float().mean().item() == pytest.approx(results["test_accuracy"])
    else:
        assert results["epoch"] == 3


def test_pooled_embeds_give_the_full_forward_logits(tiny_wav2vec2):
    from mm_hf.models import build_audio_classifier

    model = build_audio_classifier(tiny_wav2vec2, {0: "a", 1: "b"}).eval()
    waves = torch.randn(3, 4000)
    mask = torch.ones(3, 4000, dtype=torch.long)
    mask[1, 2500:] = 0
    pooled = []
    model.pooler.register_forward_hook(lambda module, args, output: pooled.append(output))
    with torch.no_grad():
        full = model(input_values=waves, attention_mask=mask).logits
        torch.testing.assert_close(model(pooled_embeds=pooled[0]).logits, full)
        labels = torch.tensor([0, 1, 1])
        assert model(pooled_embeds=pooled[0], labels=labels).loss == pytest.approx(F.cross_entropy(full, labels).item())


def test_audio_probe_without_validation_chooses_c_by_cross_validation(tiny_wav2vec2, tmp_path):
    root = tmp_path / "tones"
    write_tones_audiofolder(str(root), per_class=(10, 0, 4), seed=2)
    audio = load_recipe("audio_cls")
    results = audio.main(
        recipe_args(
            tiny_wav2vec2, tmp_path / "out", {"train": root / "train", "test": root / "test"}, "--train_val_split",
            "0", "--max_length_seconds", "0.5", "--augment", "false",
        )
    )  # fmt: skip
    assert results["probe_selection"] == "5-fold cross-validation on train" and "eval_accuracy" not in results
    assert results["test_accuracy"] >= 0.6, results


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "ast"])
def test_every_audio_encoder_caches_its_pooled_frames_once(family, tmp_path, monkeypatch):
    import soundfile as sf
    from datasets import Dataset
    from test_audio_models import BACKBONES

    from mm_hf.features import precompute_features
    from mm_hf.models import build_audio_classifier

    BACKBONES[family](str(tmp_path / family))
    model = build_audio_classifier(str(tmp_path / family), {0: "a", 1: "b"}).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([0.3, 0.5, 0.4, 0.5]):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    transform = AudioTransform(AutoFeatureExtractor.from_pretrained(tmp_path / family), max_length_seconds=0.5)
    calls = []
    original = model.backbone.forward
    # Count the clips the encoder sees (its inputs come first, under the backbone's own input name).
    monkeypatch.setattr(
        model.backbone, "forward", lambda **k: calls.append(len(next(iter(k.values())))) or original(**k)
    )
    cached = precompute_features(model, Dataset.from_dict({"audio": paths, "labels": [0, 1, 0, 1]}), transform, 4)
    assert sum(calls) == 4 and cached.column_names == ["pooled_embeds", "labels"]
    # The head on the cached vectors gives the classifier's own logits on the clips (same batch, same padding).
    batch = transform({"audio": paths, "labels": [0, 1, 0, 1]})
    with torch.no_grad():
        full = model(**{k: torch.stack(v) for k, v in batch.items() if k != "labels"}).logits
        from_cache = model(pooled_embeds=torch.tensor(cached["pooled_embeds"])).logits
    torch.testing.assert_close(from_cache, full, atol=1e-5, rtol=1e-4)
