"""Frozen-backbone passes done once (mm_hf.feature_cache): split across processes and gathered (2 processes give
what 1 gives), kept on disk under (model, data, transform) fingerprints and read back by the next run."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, load_recipe
from datasets import Dataset
from transformers import AutoProcessor

from mm_hf.data.loading import read_class_folder
from mm_hf.data.transforms import build_image_transform
from mm_hf.feature_cache import shard_rows, shared_pass
from mm_hf.features import precompute_features
from mm_hf.models import build_dual_encoder_classifier


@pytest.mark.parametrize(("rows", "world"), [(21, 2), (5, 3), (2, 4), (0, 2), (10, 1)])
def test_shards_are_contiguous_balanced_and_cover_every_row_once(rows, world):
    shards = [shard_rows(rows, rank, world) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(rows))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.fixture(scope="module")
def fusion_data(tmp_path_factory):
    from mm_hf.data.synthetic import write_imagetext_xor
    from mm_hf.models.tiny import build_tiny_encoders

    root = tmp_path_factory.mktemp("fusion")
    build_tiny_encoders(str(root / "encoders"))
    return str(root / "encoders"), write_imagetext_xor(str(root / "xor"), sizes=(24, 4, 4), seed=0)["train"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_compute_what_one_computes_and_the_next_run_reads_it(
    tiny_vtde, digits_dir, fusion_data, tmp_path, image_encoder_calls
):
    """Every sharded pass (linear-probe features, retrieval image and text embeddings, frozen fusion encoders with
    token states) on 2 gloo processes, 21 rows (shards of 11 and 10): the gathered arrays equal one process's,
    row for row, and the cache the 2-process run wrote is what a later 1-process run reads, without the tower."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from sharded_pass_two_process import compute_all

    encoders, xor = fusion_data
    args = [tiny_vtde, encoders, str(digits_dir / "train"), xor]
    cache, out = tmp_path / "cache", tmp_path / "two.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    script = os.path.join(REPO, "tests", "sharded_pass_two_process.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), script, *args, str(out), str(cache)]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    two = dict(np.load(out))

    one = compute_all(*args)  # one process, no cache
    assert image_encoder_calls and sum(image_encoder_calls) == 21
    assert set(one) == set(two)
    for key in one:
        assert one[key].shape == two[key].shape, key
        # Same rows, other batch boundaries (batches of 4 within each shard): equal up to float rounding.
        np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert (
        one["fusion_text_embeds"].ndim == 3
        and one["fusion_text_embeds_mask"].sum() < one["fusion_text_embeds_mask"].size
    )

    entries = sorted(os.listdir(cache))
    assert [e.split("-")[0] for e in entries] == ["features", "fusion", "media", "text"]
    meta = json.loads((cache / entries[0] / "meta.json").read_text())
    assert meta["rows"] == 21 and meta["processes"] == 2 and meta["key"]["pass"] == "image_embeds"

    image_encoder_calls.clear()
    again = compute_all(*args, str(cache))  # one process, reading what two wrote
    assert image_encoder_calls == []
    for key in two:
        np.testing.assert_array_equal(again[key], two[key], err_msg=key)


def _probe_setup(tiny_vtde, digits_dir, **transform_kwargs):
    images = read_class_folder(str(digits_dir / "validation"), "image", "label")
    names = sorted(set(images["label"]))
    data = images.add_column("labels", [names.index(v) for v in images["label"]]).remove_columns("label")
    processor = AutoProcessor.from_pretrained(tiny_vtde)
    for key, value in transform_kwargs.items():
        setattr(processor.image_processor, key, value)
    transform = build_image_transform(processor.image_processor, train=False, image_column="image")
    return data, transform, names


def test_cache_key_is_model_data_and_transform_not_the_head(tiny_vtde, digits_dir, tmp_path, image_encoder_calls):
    """A probe sweep changes the head (its init, its fit) and keeps the tower: it reads the cache. A different
    tower, preprocessing or file content is a different key."""
    cache = str(tmp_path / "cache")
    data, transform, names = _probe_setup(tiny_vtde, digits_dir)
    model = build_dual_encoder_classifier(tiny_vtde, dict(enumerate(names)), head_init="random")

    def features(model, data, transform):
        image_encoder_calls.clear()
        out = precompute_features(model, data, transform, 8, cache_dir=cache, desc=None)
        return np.asarray(out["image_embeds"]), sum(image_encoder_calls)

    first, computed = features(model, data, transform)
    assert computed == len(data) == 16
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # another head: a zero-shot one, a fitted one, ...
    again, computed = features(model, data, transform)
    assert computed == 0
    np.testing.assert_array_equal(again, first)

    _, other_transform, _ = _probe_setup(tiny_vtde, digits_dir, image_mean=[0.4, 0.4, 0.4])
    assert features(model, data, other_transform)[1] == 16
    with torch.no_grad():
        model.backbone.vision_model.layers[0].mlp.fc1.bias.add_(0.1)  # the tower itself changed
    changed, computed = features(model, data, transform)
    assert computed == 16 and not np.allclose(changed, first)
    # The same file names, one image rewritten in place: the data fingerprint sees its size and mtime.
    path = data[0]["image"]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert features(model, data, transform)[1] == 16
    assert len(os.listdir(cache)) == 4  # first, other transform, changed tower, touched file


def test_fusion_cache_is_shared_by_runs_that_change_only_what_trains(fusion_data, tmp_path, monkeypatch):
    """The fusion encoders' outputs are keyed by the cached encoders and their pooling kind: another fusion layer,
    hidden size or head reads them; a learned pooling (token states instead of a pooled vector) does not."""
    from mm_hf.fusion_features import cache_encoder_outputs
    from mm_hf.models import MultimodalFusionModel, build_fusion_classifier
    from mm_hf.processing import MultimodalProcessor, ProcessorSettings

    encoders, xor = fusion_data
    paths = {"image": os.path.join(encoders, "tiny-vit"), "text": os.path.join(encoders, "tiny-bert")}
    rows = Dataset.from_json(xor).select(range(8))
    rows = rows.map(lambda r: {"image": os.path.join(os.path.dirname(xor), r["image"]) if r["image"] else None})
    rows = rows.add_column("labels", [int(v == "yes") for v in rows["label"]])
    transform = MultimodalProcessor.from_encoders(paths, ProcessorSettings(modalities=["image", "text"])).transform(
        train=False
    )
    task = [{"name": "label", "problem_type": "single_label_classification", "labels": ["no", "yes"]}]
    calls = []
    original = MultimodalFusionModel.encoder_features
    monkeypatch.setattr(
        MultimodalFusionModel, "encoder_features", lambda self, m, i: calls.append(m) or original(self, m, i)
    )

    def encode(**config):
        calls.clear()
        model = build_fusion_classifier(paths, task, **config)
        cached = cache_encoder_outputs(model, rows, transform, ["image", "text"], 4, "cpu", cache_dir=str(tmp_path))
        return np.asarray(cached["text_embeds"]), len(calls)

    first, computed = encode(fusion="concat", hidden_size=16)
    assert computed == 2 * 2  # 2 batches x 2 modalities
    again, computed = encode(fusion="gated", hidden_size=32, modality_dropout=0.2)
    assert computed == 0
    np.testing.assert_array_equal(again, first)
    tokens, computed = encode(fusion="concat", hidden_size=16, text_pooling="attention")
    assert computed == 4 and tokens.ndim == 3


@pytest.mark.slow  # ~20-40 s: three recipe runs
def test_a_sweep_of_probes_runs_the_backbone_once(tiny_vtde, digits_dir, tmp_path, image_encoder_calls):
    """clip_imagecls linear probes with --features_cache_dir: the first run encodes every split, the next ones
    (another solver, another learning rate) read the cache and reach the same numbers as without it."""
    recipe = load_recipe("clip_imagecls")
    cache = str(tmp_path / "cache")

    def probe(out, *extra):
        image_encoder_calls.clear()
        recipe.main([
            "--model_name_or_path", tiny_vtde, "--train_dir", str(digits_dir / "train"),
            "--validation_dir", str(digits_dir / "validation"), "--test_dir", str(digits_dir / "test"),
            "--output_dir", str(tmp_path / out), "--do_train", "--do_eval", "--do_predict",
            "--finetune_strategy", "linear_probe", "--head_init", "random", "--use_cpu", "true",
            "--report_to", "none", "--disable_tqdm", "true", "--per_device_eval_batch_size", "16", *extra,
        ])  # fmt: skip
        results = json.loads((tmp_path / out / "all_results.json").read_text())
        return results, sum(image_encoder_calls)

    plain, encoded = probe("plain")
    first, encoded_first = probe("first", "--features_cache_dir", cache)
    assert encoded == encoded_first == 48 + 16 + 20  # every image of every split once
    second, encoded = probe("second", "--features_cache_dir", cache, "--probe_solver", "trainer", "--max_steps", "3")
    assert encoded == 0 and second["test_samples"] == 20
    assert first["test_accuracy"] == plain["test_accuracy"] and first["probe_C"] == plain["probe_C"]


# ---- size bound: least recently used entries evicted ----


@pytest.fixture
def cache_settings(monkeypatch):
    """The process-wide bound and in-use set of mm_hf.feature_cache, restored after the test."""
    from mm_hf import feature_cache

    monkeypatch.setattr(feature_cache, "_settings", {"max_gb": None})
    monkeypatch.setattr(feature_cache, "_in_use", set())


def _cached_pass(cache, name, calls):
    """A pass keyed by `name` over 1000 rows (4 kB of float32), counting the times it is computed."""

    def compute(rows):
        calls.append(name)
        return {"x": np.full(len(rows), float(len(name)), dtype=np.float32)}

    return shared_pass(1000, compute, desc=name, cache_dir=str(cache), key={"name": name})


def test_entries_over_the_bound_are_evicted_least_recently_used_first(tmp_path, caplog, cache_settings):
    from mm_hf.feature_cache import cache_entries, configure_cache

    cache, calls = tmp_path / "cache", []
    configure_cache(str(cache), None)  # run 1: no bound
    for name in ("a", "bb", "ccc"):
        _cached_pass(cache, name, calls)
    paths = {e.meta["desc"]: e.path for e in cache_entries(str(cache))}
    now = time.time()
    for age, name in ((300, "a"), (200, "bb"), (100, "ccc")):
        os.utime(os.path.join(paths[name], "meta.json"), (now - age, now - age))
    size = max(e.size for e in cache_entries(str(cache)))

    configure_cache(str(cache), None)  # run 2 reads "a": now the most recently used
    assert _cached_pass(cache, "a", calls)["x"][0] == 1.0 and calls == ["a", "bb", "ccc"]  # read, not computed
    configure_cache(str(cache), 3.5 * size / 1e9)  # run 3: room for 3 entries
    _cached_pass(cache, "dddd", calls)  # a 4th entry: the least recently used one goes, and only it
    kept = [e.meta["desc"] for e in cache_entries(str(cache))]
    assert kept == ["ccc", "a", "dddd"]  # "a" was the oldest until run 2 read it; "bb" is evicted
    assert not os.path.exists(paths["bb"]) and calls[-1] == "dddd"

    # Run 4, a bound below what it uses: what it read ("ccc") and wrote ("eeeee") stay, the rest goes, and a
    # folder another run is writing stays too (a day-old one, from a killed run, does not).
    configure_cache(str(cache), 1.5 * size / 1e9)
    (cache / "features-123.tmp-77").mkdir()
    stale = cache / "features-456.tmp-78"
    stale.mkdir()
    os.utime(stale, (now - 2 * 86400, now - 2 * 86400))
    _cached_pass(cache, "ccc", calls)
    with caplog.at_level("WARNING", logger="mm_hf.feature_cache"):
        _cached_pass(cache, "eeeee", calls)
    assert [e.meta["desc"] for e in cache_entries(str(cache))] == ["ccc", "eeeee"]
    assert "over its" in caplog.text and "in use by this run" in caplog.text
    assert (cache / "features-123.tmp-77").is_dir() and not stale.exists()
    assert calls == ["a", "bb", "ccc", "dddd", "eeeee"]


def test_an_entry_evicted_by_another_run_while_read_is_computed_again(tmp_path, monkeypatch, cache_settings):
    from mm_hf import feature_cache

    cache, calls = tmp_path / "cache", []
    feature_cache.configure_cache(str(cache), None)
    first = _cached_pass(cache, "a", calls)
    real_read = feature_cache._read

    def read_after_eviction(path):  # another run evicts the entry between the check and the read
        assert feature_cache._remove(path)
        return real_read(path)

    monkeypatch.setattr(feature_cache, "_read", read_after_eviction)
    again = _cached_pass(cache, "a", calls)
    assert calls == ["a", "a"]
    np.testing.assert_array_equal(again["x"], first["x"])
    assert [e.meta["desc"] for e in feature_cache.cache_entries(str(cache))] == ["a"]  # written again


def test_cache_folder_is_listed_trimmed_and_cleared_from_the_command_line(tmp_path, capsys, cache_settings):
    from mm_hf.feature_cache import cache_entries, configure_cache, main

    cache, calls = tmp_path / "cache", []
    configure_cache(str(cache), None)
    for name in ("a", "bb", "ccc"):
        _cached_pass(cache, name, calls)
    main(["ls", str(cache)])
    listing = capsys.readouterr().out
    assert "3 entries" in listing and all(f"features  {name}" in listing for name in ("a", "bb", "ccc"))
    size = max(e.size for e in cache_entries(str(cache)))
    main(["trim", str(cache), "--max_gb", str(2.5 * size / 1e9)])
    assert "removed 1 entries" in capsys.readouterr().out and len(cache_entries(str(cache))) == 2
    main(["clear", str(cache)])
    assert cache_entries(str(cache)) == [] and [p.name for p in cache.iterdir()] == [".lock"]


def test_a_cache_bound_without_a_cache_folder_is_refused(tmp_path):
    from transformers import TrainingArguments

    from mm_hf.args import FinetuneArguments
    from mm_hf.errors import UserError
    from mm_hf.run import start_run

    flags = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--features_cache_max_gb", "5"]
    with pytest.raises(UserError, match="--features_cache_max_gb bounds the folder of --features_cache_dir"):
        start_run((FinetuneArguments, TrainingArguments), flags)
    with pytest.raises(UserError, match="--features_cache_max_gb must be positive; got 0.0"):
        start_run((FinetuneArguments, TrainingArguments), [*flags[:-1], "0", "--features_cache_dir", str(tmp_path)])
