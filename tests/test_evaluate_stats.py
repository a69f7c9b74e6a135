"""Error bars, paired tests and cost of the fusion and --retrieval modes of python -m mm_hf.evaluate.

Tabular fusion checkpoints built in-process (test_evaluate_fusion_calibration's `_tabular_run`: no encoder, a
scoring pass takes milliseconds) and the tiny CLIP-like dual encoder of conftest.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from test_evaluate_fusion_calibration import _labels, _tabular_run

from mm_hf.evaluate import main
from mm_hf.evaluate.fusion import load_fusion
from mm_hf.metrics import significance

TASKS = [{"name": "label", "problem_type": "single_label_classification", "labels": ["a", "b", "c"]}]
FAST = ["--dataloader_num_workers", "0", "--disable_tqdm", "--num_resamples", "200"]


def _correct(run, file) -> np.ndarray:
    """Per row of `file`: is the checkpoint's argmax its label (the model run by hand, outside mm_hf.evaluate)."""
    model, processor = load_fusion(str(run))
    with open(file) as f:
        rows = [json.loads(line) for line in f]
    batch = processor.transform(train=False)({"x1": [r["x1"] for r in rows], "x2": [r["x2"] for r in rows]})
    with torch.no_grad():
        logits = model(**{k: torch.as_tensor(np.asarray(v)) for k, v in batch.items() if k != "labels"}).logits
    return logits.argmax(-1).numpy() == np.array([TASKS[0]["labels"].index(v) for v in _labels(file, "label")])


def test_fusion_cis_hold_the_estimate_and_widen_paired_tests_and_cost(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    run, files, _ = _tabular_run(tmp_path / "a", TASKS, sizes=(10, 300))
    other, _, _ = _tabular_run(tmp_path / "b", TASKS, sizes=(10, 10), seed=1)
    argv = ["--model", f"a={run}", "--model", f"copy={run}", "--model", f"other={other}", "--test_file", files["test"],
            *FAST]  # fmt: skip
    result = main([*argv, "--output_dir", str(tmp_path / "eval"), "--latency_runs", "2"])
    few = main([*argv, "--output_dir", str(tmp_path / "few"), "--latency_runs", "0", "--max_predict_samples", "40"])
    widths = {}
    for name, evaluation in (("all", result), ("few", few)):
        test = evaluation["models"]["a"]["sets"]["test"]
        for metric in ("accuracy", "macro_f1"):
            ci = test["confidence_intervals"][metric]
            assert ci["estimate"] == pytest.approx(test["metrics"][metric])
            assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["resampled"] == "rows"
        widths[name] = (
            test["confidence_intervals"]["accuracy"]["high"] - test["confidence_intervals"]["accuracy"]["low"]
        )
        assert test["confidence_intervals"]["accuracy"]["units"] == (300 if name == "all" else 40)
    assert widths["few"] > 1.5 * widths["all"] > 0  # ~sqrt(300 / 40) = 2.7 times wider

    pairs = result["paired_tests"]["test"]
    assert list(pairs) == ["a vs copy", "a vs other", "copy vs other"]
    same = pairs["a vs copy"]  # an identical copy: no discordant row, no difference, p = 1
    assert same["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0, "p_value_b_better": 1.0}
    for metric in ("accuracy", "macro_f1"):
        assert same[f"paired_bootstrap_{metric}"]["p_value"] == 1.0
        assert same[f"paired_bootstrap_{metric}"]["difference"]["estimate"] == 0.0
    correct_a, correct_other = _correct(run, files["test"]), _correct(other, files["test"])
    mcnemar = pairs["a vs other"]["mcnemar"]
    assert (mcnemar["a_only"], mcnemar["b_only"]) == (int((correct_a & ~correct_other).sum()),
                                                      int((correct_other & ~correct_a).sum()))  # fmt: skip
    assert mcnemar["a_only"] + mcnemar["b_only"] > 0 and 0 < mcnemar["p_value"] <= 1

    for name, entry in result["models"].items():
        cost = entry["cost"]
        assert cost["total_params"] > 0 and cost["disk_bytes"] > 0 and cost["peak_rss_bytes"] > 0
        for batch in ("batch_1", "batch_32"):
            assert cost["latency"][batch]["p50_s"] > 0 and cost["latency"][batch]["throughput_per_s"] > 0
        assert "latency" not in few["models"][name]["cost"]  # --latency_runs 0 skips timing
    markdown = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "Paired tests on test" in markdown and "## Cost" in markdown and "| a vs other" in markdown


def test_ranking_cis_resample_groups_not_rows(tmp_path, monkeypatch):
    tasks = [{"name": "clicked", "problem_type": "binary_classification", "labels": ["0", "1"]}]
    run, files, _ = _tabular_run(tmp_path, tasks, sizes=(10, 120))
    with open(files["test"]) as f:
        rows = [json.loads(line) for line in f]
    for i, row in enumerate(rows):  # 12 users with 10 candidates each
        row["user"] = f"u{i // 10}"
    with open(files["test"], "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    config = yaml.safe_load((run / "run_config.yaml").read_text())
    config.update(problem_type=["ranking"], group_column="user", ranking_ks=[1, 3])
    (run / "run_config.yaml").write_text(yaml.safe_dump(config))
    users = {row["user"] for row in rows if row["clicked"] == 1}  # groups without a click have no ranking metric
    drawn = []
    resample = significance._resample

    def recording(statistic, n, num_resamples, seed):
        drawn.append(n)
        return resample(statistic, n, num_resamples, seed)

    monkeypatch.setattr(significance, "_resample", recording)
    result = main(["--model", f"a={run}", "--model", f"copy={run}", "--test_file", files["test"], "--output_dir",
                   str(tmp_path / "eval"), "--latency_runs", "0", *FAST])  # fmt: skip
    test = result["models"]["a"]["sets"]["test"]
    for metric in ("ndcg@3", "mrr"):
        ci = test["confidence_intervals"][metric]
        assert ci["resampled"] == "groups" and ci["units"] == len(users) < len(rows)
        assert ci["estimate"] == pytest.approx(test["metrics"][metric]) and ci["low"] <= ci["estimate"] <= ci["high"]
    assert set(drawn) == {len(users)}  # every bootstrap (CIs and paired tests) drew groups, never rows
    paired = result["paired_tests"]["test"]["a vs copy"]
    assert "mcnemar" not in paired and paired["paired_bootstrap_ndcg@3"]["p_value"] == 1.0


def test_retrieval_recall_cis_over_queries_paired_bootstrap_and_tower_cost(tiny_vtde, digits_dir, tmp_path):
    argv = ["--retrieval", "--model", f"zs={tiny_vtde}", "--model", f"copy={tiny_vtde}", "--test_dir",
            str(digits_dir / "test"), "--output_dir", str(tmp_path), *FAST, "--latency_runs", "1"]  # fmt: skip
    result = main(argv)
    entry = result["models"]["zs"]
    test = entry["sets"]["test"]
    captions = sum(len(json.loads(line)["caption"]) for line in (digits_dir / "test" / "metadata.jsonl").open())
    for key in ("image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@1", "text_to_image_recall@5"):
        ci = test["confidence_intervals"][key]
        assert ci["estimate"] == pytest.approx(test["metrics"][key]) and ci["low"] <= ci["estimate"] <= ci["high"]
        # Queries resampled: the items one way, every caption the other; the gallery stays whole.
        assert (ci["resampled"], ci["units"]) == ("queries", 20 if key.startswith("image") else captions)
        assert result["paired_tests"]["test"]["zs vs copy"][f"paired_bootstrap_{key}"]["p_value"] == 1.0
    towers = entry["cost"]["towers"]
    assert set(towers) == {"image", "text"}
    assert entry["cost"]["total_params"] > towers["image"]["params"] > 0 and towers["text"]["params"] > 0
    for tower in towers.values():
        assert tower["latency"]["batch_32"]["p50_s"] > 0 and tower["latency"]["batch_1"]["throughput_per_s"] > 0
    markdown = (tmp_path / "evaluation.md").read_text()
    assert "Paired bootstrap on the same queries" in markdown and "| zs    |  text |" in markdown
