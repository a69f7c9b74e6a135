"""The search index (`python -m mm_hf.index`): exact search equals the retrieval metrics' brute-force ranking, the
approximate index keeps Recall@10 of exact search, `add` equals building at once, another model or a query of
another modality is refused, and the search page answers over HTTP (and in a real browser when Chromium is here)."""

import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import datasets
import numpy as np
import pytest
import soundfile
import torch
from datasets import Dataset
from PIL import Image

from mm_hf.errors import UserError
from mm_hf.index import SearchIndex, add_to_index, build_index, open_index, search
from mm_hf.index.cli import main as index_main
from mm_hf.index.store import exact_search
from mm_hf.metrics.retrieval.retrieval import retrieval_scores
from mm_hf.retrieval import build_media, evaluate_retrieval


def _jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _colour_rows(colours_dir, split: str) -> list[dict]:
    """Rows of a colours split with absolute paths: image, caption (two captions per image), colour."""
    rows = [json.loads(line) for line in open(colours_dir / split / "metadata.jsonl")]
    return [
        {
            "image": str(colours_dir / split / r["file_name"]),
            "caption": r["caption"],
            "colour": r["file_name"].split("/")[0],
        }
        for r in rows
    ]


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory, tiny_clip, colours_dir):
    """An exact index of the 18 colour test images, embedded by the tiny CLIP."""
    index_dir = str(tmp_path_factory.mktemp("clip_index"))
    build_index(tiny_clip, str(colours_dir / "test"), index_dir, caption_column="caption")
    return index_dir


def test_exact_index_equals_the_brute_force_ranking_of_the_retrieval_metrics(clip_index, tiny_clip, colours_dir):
    index, embedder = open_index(clip_index)
    assert index.manifest["index_type"] == "flat" and index.manifest["count"] == 18
    rows = _colour_rows(colours_dir, "test")
    assert [item["image"] for item in index.items] == [r["image"] for r in rows]  # metadata.jsonl order
    texts = [c for r in rows for c in r["caption"]]
    owners = [i for i, r in enumerate(rows) for _ in r["caption"]]

    # The retrieval evaluation, on its own embeddings of the same images and captions.
    data = Dataset.from_dict({"image": [r["image"] for r in rows], "captions": [r["caption"] for r in rows]})
    expected = evaluate_retrieval(
        embedder.model, data, build_media("image", embedder.processor, "image"), embedder.tokenizer,
        batch_size=4, max_length=embedder.max_length,
    )  # fmt: skip
    # The index's ranking: each caption's rank of its image among all 18 results.
    ranks = []
    for text, owner in zip(texts, owners, strict=True):
        results = search(index, embedder, "text", text, k=len(rows))
        assert [r["rank"] for r in results] == list(range(1, 19))
        assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))
        ranks.append(next(r["rank"] for r in results if r["id"] == owner))
    ranks = np.array(ranks)
    for k in (1, 5, 10):
        assert expected[f"text_to_image_recall@{k}"] == pytest.approx(float((ranks <= k).mean()))
    assert expected["text_to_image_mean_rank"] == pytest.approx(ranks.mean())
    assert expected["text_to_image_median_rank"] == pytest.approx(np.median(ranks))
    assert 0 < expected["text_to_image_recall@5"] < 1  # a ranking that discriminates, not all-first or all-last

    # Whole ranking, item queries: the FAISS order is torch's argsort of the cosine similarities.
    vectors = index.vectors()
    sims = torch.from_numpy(vectors) @ torch.from_numpy(vectors).T
    got = index.search(vectors, k=18)
    for row, results in zip(sims, got, strict=True):
        assert [r["id"] for r in results] == torch.argsort(row, descending=True, stable=True).tolist()
    # and the retrieval metric on the stored vectors says what the index says: each item first for itself.
    item_scores = retrieval_scores(vectors, vectors, list(range(18)), ks=(1,))
    assert item_scores["text_to_image_recall@1"] == 1.0 == float(np.mean([r[0]["id"] == i for i, r in enumerate(got)]))


def test_approximate_index_keeps_recall_at_10_of_exact_on_100k_vectors():
    rng = np.random.default_rng(0)
    n, dim = 100_000, 64
    centres = rng.normal(size=(300, dim)).astype(np.float32)  # clustered, as real embeddings are
    vectors = centres[rng.integers(0, 300, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    start = time.perf_counter()
    index = SearchIndex.build(vectors, [{"n": i} for i in range(n)], {}, index_type="auto", target_recall=0.98)
    built = time.perf_counter() - start
    assert index.manifest["index_type"] == "ivf"  # auto: past EXACT_MAX_ITEMS
    assert index.manifest["recall@10_vs_exact"] >= 0.98, index.manifest
    # Recall on fresh queries (not stored vectors): near the data, drawn independently of the tuning sample.
    queries = centres[rng.integers(0, 300, 500)] + 0.5 * rng.normal(size=(500, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact = exact_search(index.vectors(), queries, 10)
    approx = index.search(queries, k=10)
    recall = np.mean([len({r["id"] for r in a} & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    print(f"IVF {index.manifest['index_params']}: recall@10 {recall:.4f} on fresh queries, built in {built:.1f}s")
    assert recall >= 0.95
    assert approx[0][0]["n"] == approx[0][0]["id"]  # metadata travels with the ids


def test_auto_flat_index_becomes_ivf_when_add_passes_the_threshold(monkeypatch):
    monkeypatch.setattr("mm_hf.index.store.EXACT_MAX_ITEMS", 3000)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(4000, 16)).astype(np.float32)
    index = SearchIndex.build(vectors[:2000], [{"n": i} for i in range(2000)], {}, index_type="auto")
    assert index.manifest["index_type"] == "flat"
    index.add(vectors[2000:], [{"n": i} for i in range(2000, 4000)])
    assert index.manifest["index_type"] == "ivf" and index.manifest["count"] == 4000
    assert index.manifest["recall@10_vs_exact"] >= 0.98
    top = index.search(vectors[[5, 3500]], k=1)  # a stored vector finds itself, old and new alike
    assert [r[0]["n"] for r in top] == [5, 3500]


def test_hnsw_index_is_tuned_and_reloads_with_its_search_effort(tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 3000)] + 0.4 * rng.normal(size=(3000, 32)).astype(np.float32)
    index = SearchIndex.build(vectors, [{"n": i} for i in range(3000)], {}, index_type="hnsw", target_recall=0.99)
    assert index.manifest["index_type"] == "hnsw" and index.manifest["recall@10_vs_exact"] >= 0.99
    assert index.manifest["index_params"]["efSearch"] >= 16
    index.save(str(tmp_path))
    loaded = SearchIndex.load(str(tmp_path))
    assert loaded.index.hnsw.efSearch == index.manifest["index_params"]["efSearch"]
    assert loaded.search(vectors[:20], k=10) == index.search(vectors[:20], k=10)


def test_build_from_a_table_by_caption_skips_unreadable_files(tmp_path, tiny_clip, colours_dir, capsys):
    rows = [{"path": r["image"], "caption": r["caption"][0], "label": r["colour"], "note": i}
            for i, r in enumerate(_colour_rows(colours_dir, "validation"))]  # fmt: skip
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append({"path": "broken.png", "caption": "a broken photo.", "label": "red", "note": 99})
    table = _jsonl(tmp_path / "items.jsonl", rows)
    index_dir = str(tmp_path / "by_caption")
    with pytest.raises(UserError, match="--audio_column: the model .* embeds image"):
        index_main(["build", tiny_clip, "--data", table, "--audio_column", "path", "--index_dir", index_dir])
    with pytest.raises(UserError, match="has no column 'image'.*set --image_column"):
        index_main(["build", tiny_clip, "--data", table, "--index_dir", index_dir])
    index_main(["build", tiny_clip, "--data", table, "--image_column", "path", "--embed", "caption",
                "--keep_columns", "label", "--index_dir", index_dir])  # fmt: skip
    out = capsys.readouterr().out
    assert "built 12 items" in out and "skipped 1 unreadable file(s), e.g." in out and "broken.png" in out
    index, embedder = open_index(index_dir)
    assert index.manifest["embed"] == "caption" and index.manifest["skipped"] == 1
    assert index.items[5] == {"label": "green", "path": rows[5]["path"], "caption": "a green photo."}
    # Items are embedded by their caption: the caption itself is the best query, at cosine 1.
    top = search(index, embedder, "text", "a green photo.", 4)
    assert {r["label"] for r in top} == {"green"} and top[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_adding_items_equals_building_at_once(tmp_path, tiny_clip, colours_dir):
    first, second = _colour_rows(colours_dir, "train"), _colour_rows(colours_dir, "validation")
    _jsonl(tmp_path / "first.jsonl", first)
    _jsonl(tmp_path / "second.jsonl", second)
    _jsonl(tmp_path / "all.jsonl", first + second)
    build_index(tiny_clip, str(tmp_path / "first.jsonl"), str(tmp_path / "grown"), keep_columns=["colour"])
    add_to_index(str(tmp_path / "grown"), str(tmp_path / "second.jsonl"), keep_columns=["colour"])
    build_index(tiny_clip, str(tmp_path / "all.jsonl"), str(tmp_path / "once"), keep_columns=["colour"])

    grown, embedder = open_index(str(tmp_path / "grown"))
    once = SearchIndex.load(str(tmp_path / "once"))
    assert grown.manifest["count"] == once.manifest["count"] == len(first) + len(second) == 48
    assert grown.items == once.items
    assert grown.items[40] == {
        "colour": second[4]["colour"],
        "image": second[4]["image"],
        "caption": f"a {second[4]['colour']} photo.",
    }
    np.testing.assert_allclose(grown.vectors(), once.vectors(), atol=1e-6)
    for kind, query in (("text", "a red photo."), ("image", second[7]["image"])):
        a, b = search(grown, embedder, kind, query, 10), search(once, embedder, kind, query, 10)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-6)
    assert search(grown, embedder, "image", second[7]["image"], 1)[0]["id"] == len(first) + 7


def test_build_from_a_hub_style_dataset_equals_the_table_and_decodes_each_image_once(
    tmp_path, tiny_clip, colours_dir, monkeypatch, capsys
):
    """--dataset_name: a parquet split with the images embedded as bytes (as on the Hub) gives the index of the same
    images read from their files (the bytes written once under INDEX_DIR/media); the embedding pass, which is also
    the check, opens each file once and shows a progress bar."""
    rows = _colour_rows(colours_dir, "validation")
    table = [{"image": r["image"], "caption": r["caption"][0], "colour": r["colour"]} for r in rows]
    _jsonl(tmp_path / "items.jsonl", table)
    (tmp_path / "hub").mkdir()
    embedded = [{**r, "image": {"bytes": open(r["image"], "rb").read(), "path": os.path.basename(r["image"])}}
                for r in table]  # fmt: skip
    hub = Dataset.from_list(embedded).cast_column("image", datasets.Image())
    hub.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    index_main(["build", tiny_clip, "--data", str(tmp_path / "items.jsonl"), "--index_dir", str(tmp_path / "files"),
                "--embed", "both"])  # fmt: skip
    assert sorted(opened) == sorted(r["image"] for r in table)  # once each: no separate check pass
    assert "embedding images" in capsys.readouterr().err
    index_main(["build", tiny_clip, "--dataset_name", str(tmp_path / "hub"), "--index_dir", str(tmp_path / "hub_index"),
                "--embed", "both", "--disable_tqdm"])  # fmt: skip
    assert "embedding images" not in capsys.readouterr().err
    from_files, embedder = open_index(str(tmp_path / "files"))
    from_hub = SearchIndex.load(str(tmp_path / "hub_index"))
    np.testing.assert_allclose(from_hub.vectors(), from_files.vectors(), atol=1e-6)
    assert [{k: v for k, v in item.items() if k != "image"} for item in from_hub.items] == [
        {"caption": r["caption"], "colour": r["colour"]} for r in table
    ]
    stored = [item["image"] for item in from_hub.items]
    assert all(os.path.dirname(p) == str(tmp_path / "hub_index" / "media") for p in stored)
    assert [open(p, "rb").read() for p in stored] == [open(r["image"], "rb").read() for r in table]
    top = search(from_hub, embedder, "image", table[3]["image"], 1)[0]
    assert (top["id"], top["colour"]) == (3, table[3]["colour"])
    with pytest.raises(UserError, match="either --data .* or --dataset_name"):
        index_main(["build", tiny_clip, "--index_dir", str(tmp_path / "none")])


def test_another_model_or_processor_is_refused(tmp_path, clip_index, tiny_clip, tiny_vtde, colours_dir):
    with pytest.raises(UserError, match=f"not the one {clip_index} was built with"):
        open_index(clip_index, model=tiny_vtde)
    # The same architecture fine-tuned: one text-tower weight changed (the projections untouched).
    tuned = str(tmp_path / "tuned")
    shutil.copytree(tiny_clip, tuned)
    model = open_index(clip_index)[1].model.backbone
    with torch.no_grad():
        model.text_model.encoder.layers[0].mlp.fc1.weight[0, 0] += 0.01
    model.save_pretrained(tuned)
    with pytest.raises(UserError, match="the model of .*tuned is not the one"):
        open_index(clip_index, model=tuned)
    with pytest.raises(UserError, match="the model of .*tuned is not the one"):
        add_to_index(clip_index, str(colours_dir / "validation"), model=tuned)
    assert SearchIndex.load(clip_index).manifest["count"] == 18  # nothing added
    # The same weights with another image normalisation.
    renormalised = str(tmp_path / "renormalised")
    shutil.copytree(tiny_clip, renormalised)
    config_path = os.path.join(renormalised, "processor_config.json")
    if not os.path.exists(config_path):
        config_path = os.path.join(renormalised, "preprocessor_config.json")
    config = json.load(open(config_path))
    target = config.get("image_processor", config)
    target["image_mean"] = [0.5, 0.5, 0.5]
    json.dump(config, open(config_path, "w"))
    with pytest.raises(UserError, match="the processor of .*renormalised is not the one"):
        open_index(clip_index, model=renormalised)
    # The checkpoint it records has gone: the error says to pass --model.
    moved = str(tmp_path / "moved_index")
    shutil.copytree(clip_index, moved)
    manifest = json.load(open(os.path.join(moved, "manifest.json")))
    manifest["model"] = str(tmp_path / "deleted_checkpoint")
    json.dump(manifest, open(os.path.join(moved, "manifest.json"), "w"))
    with pytest.raises(UserError, match="no longer exists: pass --model"):
        index_main(["search", moved, "--text", "red"])
    index_main(["search", moved, "--text", "red", "--model", tiny_clip])  # the same model, moved: accepted


def _write_tones(folder, freqs) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    t = np.arange(16000) / 16000
    paths = []
    for f in freqs:
        paths.append(os.path.join(folder, f"tone_{f}.wav"))
        soundfile.write(paths[-1], 0.5 * np.sin(2 * np.pi * f * t).astype(np.float32), 16000)
    return paths


def test_a_query_of_the_wrong_modality_is_refused(tmp_path, clip_index, tiny_clap, colours_dir, capsys):
    tones = _write_tones(tmp_path / "tones", (220, 440, 880, 1760))
    with pytest.raises(UserError, match="an audio query on an index of image items .* query with text or --image"):
        index_main(["search", clip_index, "--audio", tones[0]])
    # An audio (CLAP) index answers audio and text, and refuses an image.
    audio_index = str(tmp_path / "audio_index")
    index_main(["build", tiny_clap, "--data", str(tmp_path / "tones"), "--index_dir", audio_index])
    assert "built 4 items (4 in all), flat index" in capsys.readouterr().out
    index_main(["search", audio_index, "--audio", tones[2], "-k", "2"])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert results[0]["audio"] == tones[2] and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    image = str(colours_dir / "test" / "red" / "0.png")
    with pytest.raises(UserError, match="an image query on an index of audio items .* query with text or --audio"):
        index_main(["search", audio_index, "--image", image])


def test_search_command_prints_results(clip_index, colours_dir, capsys):
    image = str(colours_dir / "test" / "green" / "2.png")
    index_main(["search", clip_index, "--image", image, "-k", "3", "--format", "table"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "id", "image"] and len(lines) == 4
    assert lines[1].split()[:4] == ["1", "1.0000", "8", image]  # green is the second colour: ids 6..11
    with pytest.raises(UserError, match="already holds an index"):
        index_main(["build", "unused", "--data", str(colours_dir / "test"), "--index_dir", clip_index])


@pytest.fixture(scope="module")
def app(clip_index):
    from mm_hf.index.server import create_app

    index, embedder = open_index(clip_index)
    return create_app(index, embedder, "colours"), index, embedder


def test_the_server_answers_a_query_over_http(app, colours_dir):
    from fastapi.testclient import TestClient

    app, index, embedder = app
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "18 image items" in page.text
    answer = client.post("/search", data={"text": "a red photo.", "k": "5"}).json()
    expected = search(index, embedder, "text", "a red photo.", 5)
    assert [r["id"] for r in answer["results"]] == [r["id"] for r in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([r["score"] for r in expected])
    image = colours_dir / "test" / "blue" / "4.png"
    with open(image, "rb") as f:
        answer = client.post("/search", files={"file": ("query.png", f, "image/png")}, data={"k": "3"}).json()
    assert answer["results"][0]["id"] == 4 and answer["results"][0]["name"] == "4.png"  # blue: ids 0..5
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-5) and len(answer["results"]) == 3
    refused = client.post("/search", files={"file": ("tone.wav", b"RIFF", "audio/wav")})
    assert refused.status_code == 400 and "an audio query on an index of image items" in refused.json()["detail"]
    assert client.post("/search", data={"text": "  "}).status_code == 400
    thumb = client.get("/media/4")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    assert client.get("/media/18").status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_search_page_in_a_headless_browser(app, tmp_path):
    import uvicorn

    app, index, embedder = app
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/?text=a+green+photo.&k=5"
        chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
        dom = subprocess.run([*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
        expected = search(index, embedder, "text", "a green photo.", 5)
        shown = [int(part.split('"')[0]) for part in dom.split('class="result" data-id="')[1:]]
        assert shown == [r["id"] for r in expected], dom[-2000:]
        assert "5 results for 'a green photo.'" in dom
        screenshot = tmp_path / "search_page.png"
        subprocess.run(
            [*chromium, f"--screenshot={screenshot}", "--window-size=1100,800", url], capture_output=True, timeout=60
        )
        shot = Image.open(screenshot)
        assert (
            shot.size == (1100, 800) and len(shot.convert("L").getcolors(1 << 16)) > 20
        )  # thumbnails drawn, not blank
        if os.environ.get("MM_HF_SCREENSHOT_DIR"):  # keep it for a person to look at
            shutil.copy(screenshot, os.environ["MM_HF_SCREENSHOT_DIR"])
        print(f"screenshot: {screenshot}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
