"""Robust fine-tuning in the recipes (issue 13): LP-FT, FLYP and WiSE-FT's α sweep through the run protocol, and the
report they write. The weight interpolation itself is tested in test_wise_ft.py."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import load_recipe
from PIL import Image, ImageOps
from test_clip_imagecls import CLASSES, folders, run
from transformers import AutoModel, AutoModelForImageClassification, AutoProcessor, Trainer

import mm_hf.flyp
import mm_hf.lp_ft
from mm_hf.args.arguments import parse_alphas
from mm_hf.data.transforms import build_image_transform
from mm_hf.errors import UserError
from mm_hf.flyp import build_flyp_classifier, check_flyp
from mm_hf.measures import TrainerMeasure
from mm_hf.models import build_dual_encoder_classifier, class_text_embeddings
from mm_hf.training import apply_strategy
from mm_hf.wise_ft import WiseFT, format_robustness_report

recipe = load_recipe("clip_imagecls")
TEMPLATES = ["a photo of the digit {}.", "a drawing of a {}."]


def test_wise_ft_alphas_parse_from_commas_lists_and_yaml():
    assert parse_alphas("0,0.25,1") == [0.0, 0.25, 1.0]
    assert parse_alphas(["0", "0.5", "1"]) == [0.0, 0.5, 1.0]  # --wise_ft_alphas 0 0.5 1
    assert parse_alphas([0, 1]) == [0.0, 1.0]  # a YAML list
    for bad in ("0,1.5", "a,b", ""):
        with pytest.raises(UserError, match="--wise_ft_alphas"):
            parse_alphas(bad)


def test_wise_ft_select_must_name_a_measured_set():
    measure = TrainerMeasure(trainer=None, datasets={}, metrics=None)
    args = SimpleNamespace(wise_ft_alphas=[0.0, 1.0], wise_ft_select="sketches")
    with pytest.raises(UserError, match=r"--wise_ft_select sketches.*\['photos', 'validation'\]"):
        WiseFT.start(None, measure, {"validation": [1]}, args, {"photos": [1]})
    wrapped = SimpleNamespace(measure=measure)  # a measure wrapping the Trainer's (mm_hf.evaluate.shifts) is one
    with pytest.raises(UserError, match="--wise_ft_select sketches"):
        WiseFT.start(None, wrapped, {"validation": [1]}, args, {"photos": [1]})
    args.wise_ft_select = "validation"
    with pytest.raises(UserError, match="may not be named 'validation'"):
        WiseFT.start(None, measure, {"validation": [1]}, args, {"validation": [2]})
    with pytest.raises(UserError, match="RetrievalMeasure"):
        from mm_hf.measures import RetrievalMeasure

        WiseFT.start(None, RetrievalMeasure.__new__(RetrievalMeasure), {"validation": [1]}, args)


def test_flyp_refuses_what_it_cannot_train():
    with pytest.raises(UserError, match="--finetune_strategy lora is not supported"):
        check_flyp(SimpleNamespace(finetune_strategy="lora"), "auto", set())
    with pytest.raises(UserError, match="drop --head_init random"):
        check_flyp(SimpleNamespace(finetune_strategy="full"), "random", {"head_init"})


def test_robustness_report_lists_every_model_and_the_alpha_curve():
    point = lambda v, o: {"validation": {"accuracy": v}, "inverted": {"accuracy": o}}  # noqa: E731
    results = {
        "zeroshot_test_accuracy": 0.5, "lp_test_accuracy": 0.7, "lp_eval_accuracy": 0.65,
        "finetuned_test_accuracy": 0.8, "test_accuracy": 0.82, "wise_ft_alpha": 0.5,
        "wise_ft_select": "validation/accuracy",
        "wise_ft_curve": [{"alpha": 0.0, **point(0.5, 0.4)}, {"alpha": 0.5, **point(0.85, 0.6)},
                          {"alpha": 1.0, **point(0.8, 0.3)}],
    }  # fmt: skip
    report = format_robustness_report(results, "test", "zero-shot")
    lines = report.splitlines()
    cells = lambda line: [c.strip() for c in line.split("|")[1:-1]]  # noqa: E731
    assert cells(lines[0]) == ["model", "test accuracy", "validation accuracy", "inverted accuracy"]
    assert {cells(line)[0]: cells(line)[1:] for line in lines[2:6]} == {
        "zero-shot": ["0.5000", "0.5000", "0.4000"],
        "linear probe (LP-FT stage 1)": ["0.7000", "0.6500", "–"],
        "LP-FT (α = 1)": ["0.8000", "0.8000", "0.3000"],
        "WiSE-FT (α = 0.5, saved)": ["0.8200", "0.8500", "0.6000"],
    }
    assert ["0.5 ←", "0.8500", "0.6000"] in [cells(line) for line in lines]
    assert format_robustness_report({"test_accuracy": 0.8}, "test", "zero-shot") is None  # a plain run


@pytest.fixture(scope="module")
def inverted_test_dir(digits_dir, tmp_path_factory):
    """The digits' test split with inverted ink: a shift the tiny model never saw."""
    root = tmp_path_factory.mktemp("inverted")
    for path in (digits_dir / "test").glob("*/*.png"):
        (root / path.parent.name).mkdir(exist_ok=True)
        ImageOps.invert(Image.open(path).convert("L")).save(root / path.parent.name / path.name)
    return root


def test_lp_ft_second_stage_starts_from_the_probe_and_wise_ft_saves_the_chosen_alpha(
    tiny_vtde, digits_dir, colours_dir, inverted_test_dir, tmp_path, monkeypatch
):
    heads = {}
    fit = mm_hf.lp_ft.fit_classifier_head

    def recording_fit(model, *args, **kwargs):
        heads["zeroshot"] = model.classifier.weight.detach().clone()
        out = fit(model, *args, grid=(0.1, 1.0, 10.0), **kwargs)  # 3 values of C, not 33: the test's time
        heads["probe"] = model.classifier.weight.detach().clone()
        return out

    train = Trainer.train

    def recording_train(self, *args, **kwargs):
        heads["train_start"] = self.model.classifier.weight.detach().clone()
        return train(self, *args, **kwargs)

    monkeypatch.setattr(mm_hf.lp_ft, "fit_classifier_head", recording_fit)
    monkeypatch.setattr(Trainer, "train", recording_train)
    out = tmp_path / "out"
    results = run(
        tiny_vtde, out, "--finetune_strategy", "lp_ft", "--head_init", "zeroshot", "--wise_ft_alphas", "0,1",
        "--ood_dir", f"inverted={inverted_test_dir}", "--wise_ft_select", "inverted",
        "--zeroshot_eval_dir", str(colours_dir / "test"), data=folders(digits_dir),
    )  # fmt: skip
    # Stage 2 trains from the head stage 1 fitted, not from the zero-shot one.
    assert torch.equal(heads["train_start"], heads["probe"]) and not torch.equal(heads["probe"], heads["zeroshot"])
    assert (
        results["probe_solver"] == "lbfgs" and 0 <= results["lp_test_accuracy"] <= 1 and "lp_eval_accuracy" in results
    )
    assert {"lp_inverted_accuracy", "lp_retention_accuracy"} <= set(results)  # the probe stage on every set too

    curve = results["wise_ft_curve"]
    assert [p["alpha"] for p in curve] == [0.0, 1.0] and results["wise_ft_select"] == "inverted/accuracy"
    assert {"validation", "inverted", "retention"} <= set(curve[0]) and results["wise_ft_alpha"] in (0.0, 1.0)
    # Zero-shot retention on the unrelated colours: at α = 0 exactly the value measured before training.
    assert curve[0]["retention"]["accuracy"] == results["zeroshot_retention_accuracy"]
    assert results["retention_accuracy"] == curve[int(results["wise_ft_alpha"])]["retention"]["accuracy"]
    best = max(p["inverted"]["accuracy"] for p in curve)
    assert next(p["alpha"] for p in curve if p["inverted"]["accuracy"] == best) == results["wise_ft_alpha"]
    # The saved model is the chosen endpoint exactly: the start model (α = 0) or the fine-tuned one (α = 1).
    reference = "zeroshot_test" if results["wise_ft_alpha"] == 0.0 else "finetuned_test"
    assert results["test_loss"] == results[f"{reference}_loss"]
    assert results["zeroshot_test_loss"] != results["finetuned_test_loss"]
    # ... and reloads as a plain checkpoint giving the recorded accuracy.
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    paths = sorted((digits_dir / "test").glob("*/*.png"))
    transform = build_image_transform(AutoProcessor.from_pretrained(out).image_processor, train=False)
    with torch.no_grad():
        logits = model(pixel_values=torch.stack(transform({"image": [str(p) for p in paths]})["pixel_values"])).logits
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    assert results["test_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())

    report = (out / "robustness.md").read_text()
    assert "linear probe (LP-FT stage 1)" in report and "inverted accuracy" in report and "retention accuracy" in report
    assert "Robust fine-tuning" in (out / "README.md").read_text() and (out / "wise_ft_curve.png").exists()
    assert json.loads((out / "all_results.json").read_text())["wise_ft_curve"] == curve


def test_flyp_starts_at_the_zero_shot_model_and_trains_both_towers(tiny_vtde):
    backbone = AutoModel.from_pretrained(tiny_vtde)
    tokenizer = AutoProcessor.from_pretrained(tiny_vtde).tokenizer
    id2label = dict(enumerate(CLASSES))
    zero_shot = build_dual_encoder_classifier(tiny_vtde, id2label, tokenizer=tokenizer, prompt_templates=TEMPLATES)
    model = apply_strategy(build_flyp_classifier(backbone, id2label, tokenizer, TEMPLATES), SimpleNamespace(
        finetune_strategy="full", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None
    ))  # fmt: skip
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert any(".text_model." in n for n in trainable) and any(".vision_model." in n for n in trainable)
    assert "classifier.backbone.logit_scale" in trainable and not any(".classifier.classifier." in n for n in trainable)
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(
            model(pixel_values=pixels).logits, zero_shot.eval()(pixel_values=pixels).logits, atol=1e-5
        )
    text_before = model.backbone.text_model.embeddings.word_embeddings.weight.detach().clone()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 3, 0, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model._step == 2 and not torch.equal(
        model.backbone.text_model.embeddings.word_embeddings.weight, text_before
    )
    model.eval()
    with torch.no_grad():
        tuned = model(pixel_values=pixels).logits
    classifier = model.to_classifier().eval()
    assert not hasattr(classifier.backbone, "text_model") and classifier.config.text_tower is False
    with torch.no_grad():
        assert torch.allclose(classifier(pixel_values=pixels).logits, tuned, atol=1e-5)


def test_flyp_recipe_saves_a_plain_classifier_whose_head_is_the_tuned_prompt_embeddings(
    tiny_vtde, digits_dir, tmp_path, monkeypatch
):
    recomputed = {}
    to_classifier = mm_hf.flyp.FlypClassifier.to_classifier

    def recording(self):
        recomputed["head"] = class_text_embeddings(self.backbone, self.tokenizer, self.class_names, self.templates)
        recomputed["text"] = self.backbone.text_model.embeddings.word_embeddings.weight.detach().clone()
        return to_classifier(self)

    monkeypatch.setattr(mm_hf.flyp.FlypClassifier, "to_classifier", recording)
    out = tmp_path / "out"
    results = run(tiny_vtde, out, "--loss", "flyp", "--finetune_strategy", "full", steps=2, data=folders(digits_dir))
    assert results["finetune_loss"] == "flyp" and results["train_loss"] > 0
    assert round(results["test_accuracy"] * 20, 6).is_integer()  # all 20 test images scored, no batch dropped
    start_text = AutoModel.from_pretrained(tiny_vtde).text_model.embeddings.word_embeddings.weight
    assert not torch.equal(recomputed["text"], start_text)  # the text tower trained
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.text_tower is False
    torch.testing.assert_close(model.classifier.weight, recomputed["head"].to(model.classifier.weight.dtype))
    assert "FLYP (saved)" in (out / "robustness.md").read_text()


@pytest.mark.slow  # two recipe runs, one of them 2 processes (~60 s on a busy 2-core machine)
def test_two_process_flyp_equals_one_process_with_the_global_batch(tiny_vtde, digits_dir, tmp_path):
    """FLYP's negatives are gathered across processes (mm_hf.models.losses.clip_loss): 2 processes x 4 images train
    the same weights as 1 process x 8. Dropout off (the tiny BERT's 0.1 would draw different masks per process) and
    SGD, whose update is linear in the gradient, so only summation order separates the two runs. (It caught Trainer
    scaling the loss by the world size while FlypClassifier did not declare `accepts_loss_kwargs = False`.)"""
    from safetensors.torch import load_file
    from test_distributed import check_ok, launch

    model_dir = tmp_path / "tiny_no_dropout"
    model = AutoModel.from_pretrained(tiny_vtde)
    model.config.text_config.hidden_dropout_prob = model.config.text_config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(model_dir)
    AutoProcessor.from_pretrained(tiny_vtde).save_pretrained(model_dir)
    flags = ("--loss", "flyp", "--finetune_strategy", "full", "--optim", "sgd", "--learning_rate", "0.5",
             "--save_strategy", "no", "--eval_strategy", "no", "--max_steps", "2")  # fmt: skip
    check_ok(launch(model_dir, digits_dir, tmp_path / "two", *flags))  # 2 processes x per-device batch 4
    one = tmp_path / "one"
    run(model_dir, one, *flags, "--per_device_train_batch_size", "8", data=folders(digits_dir))
    two, single = load_file(tmp_path / "two" / "model.safetensors"), load_file(one / "model.safetensors")
    start = AutoModel.from_pretrained(model_dir).vision_model.embeddings.patch_embeddings.projection.weight
    assert not torch.allclose(single["backbone.vision_model.embeddings.patch_embeddings.projection.weight"], start)
    assert two.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(two[name], single[name], atol=1e-5, rtol=1e-4, msg=name)


def test_flyp_on_clap_trains_audio_and_text_towers_with_both_temperatures(tiny_clap):
    """audio_cls --loss flyp: the same wrapper over CLAP, audio->text logits at logit_scale_a, text->audio at _t."""
    backbone = AutoModel.from_pretrained(tiny_clap)
    tokenizer = AutoProcessor.from_pretrained(tiny_clap).tokenizer
    model = build_flyp_classifier(backbone, {0: "dog", 1: "rain"}, tokenizer, ["the sound of {}."])
    model = apply_strategy(model, SimpleNamespace(finetune_strategy="full"))
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert {"classifier.backbone.logit_scale_a", "classifier.backbone.logit_scale_t"} <= trainable
    assert any(".audio_model." in n for n in trainable) and any(".text_model." in n for n in trainable)
    features = torch.randn(4, 1, 100, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    loss = model(input_features=features, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    assert backbone.logit_scale_t.grad is not None and backbone.text_projection.linear1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(input_features=features).logits
    classifier = model.to_classifier().eval()
    with torch.no_grad():
        torch.testing.assert_close(classifier(input_features=features).logits, logits)
