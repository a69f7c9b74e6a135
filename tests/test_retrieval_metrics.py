"""The `retrieval` evaluate module vs a brute-force full-matrix reference, hand-computed ranks, memory bound."""

import sys

import numpy as np
import pytest
import torch

from mm_hf.metrics import load_metric

KS = (1, 5, 10)


@pytest.fixture(scope="module")
def retrieval():
    return load_metric("retrieval")


def _exact_data(seed, num_items, dim, max_captions=5):
    """Embeddings whose similarities are exact in float32, normalised or not, so ties are real and reproducible.

    Entries are +-1 times a per-row power of two and `dim` is a power of 4: L2 normalisation then only
    divides by a power of two. Captions are their item's vector with ~30 % of signs flipped, and come
    in shuffled order with 1..max_captions per item.
    """
    rng = np.random.default_rng(seed)
    images = rng.choice([-1.0, 1.0], (num_items, dim)) * 2.0 ** rng.integers(-1, 3, (num_items, 1))
    counts = rng.integers(1, max_captions + 1, num_items)
    text_to_image = rng.permutation(np.repeat(np.arange(num_items), counts))
    flips = np.where(rng.random((len(text_to_image), dim)) < 0.3, -1.0, 1.0)
    texts = np.sign(images[text_to_image]) * flips * 2.0 ** rng.integers(-1, 3, (len(text_to_image), 1))
    return images.astype(np.float32), texts.astype(np.float32), text_to_image


def _reference(images, texts, text_to_image, ks, normalize, ties):
    """Full similarity matrix in float64, ranks read off a descending argsort (lexsort breaks ties)."""
    images, texts = images.astype(np.float64), texts.astype(np.float64)
    if normalize:
        images = images / np.linalg.norm(images, axis=1, keepdims=True)
        texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sims = images @ texts.T  # (num_items, num_texts)
    correct = text_to_image[None, :] == np.arange(len(images))[:, None]
    # Among equal scores, optimistic ties put the correct candidates first, pessimistic ones last.
    tie_key = ~correct if ties == "optimistic" else correct

    image_ranks = np.empty(len(images), dtype=np.int64)
    for i in range(len(images)):
        order = np.lexsort((tie_key[i], -sims[i]))  # last key is the primary one
        image_ranks[i] = np.flatnonzero(correct[i, order])[0] + 1
    text_ranks = np.empty(len(texts), dtype=np.int64)
    for t in range(len(texts)):
        order = np.lexsort((tie_key[:, t], -sims[:, t]))
        text_ranks[t] = np.flatnonzero(order == text_to_image[t])[0] + 1

    out = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        out.update({f"{direction}_recall@{k}": float((ranks <= k).mean()) for k in ks})
        out[f"{direction}_median_rank"] = float(np.median(ranks))
        out[f"{direction}_mean_rank"] = float(ranks.mean())
    out["retrieval_mean_recall"] = float(np.mean([v for key, v in out.items() if "recall@" in key]))
    out["num_items"], out["num_texts"] = float(len(images)), float(len(texts))
    return out


@pytest.mark.parametrize(
    ("seed", "num_items", "dim", "chunk_size", "normalize", "ties"),
    [
        (0, 12, 16, 1024, True, "optimistic"),  # one chunk, dim 16: many exact ties
        (1, 12, 16, 5, True, "pessimistic"),
        (2, 40, 64, 7, False, "optimistic"),  # unnormalised: the row scales change the ranking
        (3, 40, 64, 7, False, "pessimistic"),
        (4, 300, 64, 64, True, "optimistic"),  # ~900 texts: many chunks in both directions
        (4, 300, 64, 64, True, "pessimistic"),
    ],
)
def test_matches_brute_force(retrieval, seed, num_items, dim, chunk_size, normalize, ties):
    images, texts, text_to_image = _exact_data(seed, num_items, dim)
    expected = _reference(images, texts, text_to_image, KS, normalize, ties)
    got = retrieval.compute(
        predictions=texts,
        references=text_to_image,
        image_embeds=images,
        ks=KS,
        chunk_size=chunk_size,
        normalize=normalize,
        ties=ties,
    )
    assert list(got) == list(expected)
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    if num_items == 300:
        assert 600 < got["num_texts"] < 1200 and 0.0 < got["image_to_text_recall@1"] < 1.0


def test_hand_computed_example(retrieval):
    # sims (images x captions):   T0    T1    T2    T3      captions of: T0 -> 0, T1 -> 2, T2 -> 1, T3 -> 2
    #                      I0      1     0    .6   -.8
    #                      I1      0     1    .8    .6
    #                      I2     -1     0   -.6    .8
    # image->text: I0 best T0 rank 1; I1 best T2, beaten by T1: rank 2; I2 best T3 (.8 > T1's 0): rank 1.
    # text->image: T1 (item 2, score 0) is beaten by I1 and tied with I0: rank 2 optimistic, 3 pessimistic.
    images = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    texts = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.8, 0.6]]
    refs = [0, 2, 1, 2]
    kwargs = {"predictions": texts, "references": refs, "image_embeds": images, "ks": (1, 2)}
    optimistic = retrieval.compute(**kwargs)
    assert optimistic == pytest.approx(
        {
            "image_to_text_recall@1": 2 / 3,
            "image_to_text_recall@2": 1.0,
            "image_to_text_median_rank": 1.0,
            "image_to_text_mean_rank": 4 / 3,
            "text_to_image_recall@1": 0.75,
            "text_to_image_recall@2": 1.0,
            "text_to_image_median_rank": 1.0,
            "text_to_image_mean_rank": 1.25,
            "retrieval_mean_recall": (2 / 3 + 1 + 0.75 + 1) / 4,
            "num_items": 3.0,
            "num_texts": 4.0,
        }
    )
    pessimistic = retrieval.compute(**kwargs, ties="pessimistic")
    assert pessimistic["text_to_image_recall@2"] == 0.75
    assert pessimistic["text_to_image_mean_rank"] == 1.5
    assert pessimistic["image_to_text_mean_rank"] == pytest.approx(4 / 3)


def test_perfect_and_reversed_embeddings(retrieval):
    images = torch.randn(20, 32)
    # Perfect: every caption is a (scaled) copy of its image; 1-3 captions per image.
    refs = torch.arange(20).repeat_interleave(torch.randint(1, 4, (20,)))
    perfect = retrieval.compute(predictions=images[refs] * 3.0, references=refs, image_embeds=images)
    for key, value in perfect.items():
        if "recall" in key or "rank" in key:
            assert value == 1.0, key
    # Reversed: each image's only caption is its negation, the least similar of all.
    worst = retrieval.compute(predictions=-images, references=torch.arange(20), image_embeds=images)
    for direction in ("image_to_text", "text_to_image"):
        assert all(worst[f"{direction}_recall@{k}"] == 0.0 for k in KS)
        assert worst[f"{direction}_median_rank"] == worst[f"{direction}_mean_rank"] == 20.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predictions": [[1, 0, 0], [0, 0, 1]], "references": [0, 2]}, "no caption.*item index 1"),
        ({"predictions": [[1.0, 0.0]] * 3}, "dimension 2 but image_embeds has 3"),
        ({"references": [0, 1, 3]}, r"item indices in \[0, 3\); text 2 has 3"),
        ({"image_embeds": None}, "image_embeds="),
        ({"image_embeds": np.full((3, 3), np.nan)}, "NaN"),
        ({"ties": "random"}, "ties must be one of"),
        ({"ks": (0, 5)}, "ks must be positive"),
    ],
)
def test_errors(kwargs, message):
    # A fresh module each time: evaluate 0.4.6 keeps its cache-file lock when _compute raises,
    # which costs the next compute() on the same instance a 1 s lock timeout.
    valid = {"predictions": np.eye(3), "references": [0, 1, 2], "image_embeds": np.eye(3)}
    with pytest.raises(ValueError, match=message):
        load_metric("retrieval").compute(**{**valid, **kwargs})


def test_similarity_blocks_stay_within_chunk_bound(retrieval, monkeypatch):
    images, texts, text_to_image = _exact_data(5, 50, 16)
    num_texts, chunk_size = len(texts), 16
    sizes = []
    matmul = torch.matmul

    def spy(*args, **kwargs):
        result = matmul(*args, **kwargs)
        sizes.append(result.numel())
        return result

    monkeypatch.setattr(torch, "matmul", spy)
    retrieval.compute(predictions=texts, references=text_to_image, image_embeds=images, chunk_size=chunk_size)
    assert len(sizes) == -(-50 // chunk_size) + -(-num_texts // chunk_size)  # one product per chunk
    assert max(sizes) <= chunk_size * max(50, num_texts) < 50 * num_texts


def test_batches_and_plain_function(retrieval):
    images, texts, text_to_image = _exact_data(6, 30, 16)
    for start in range(0, len(texts), 8):  # e.g. one add_batch per eval step
        retrieval.add_batch(predictions=texts[start : start + 8], references=text_to_image[start : start + 8])
    batched = retrieval.compute(image_embeds=torch.from_numpy(images), chunk_size=4)
    module = sys.modules[type(retrieval).__module__]
    assert module.retrieval_scores(images, texts, text_to_image, chunk_size=1000) == batched


def test_modality_names_the_keys(retrieval):
    """modality="audio" gives audio_to_text_* / text_to_audio_* keys with the same values."""
    images, texts, text_to_image = _exact_data(3, num_items=12, dim=16)
    image_keys = retrieval.compute(predictions=texts, references=text_to_image, image_embeds=images)
    audio_keys = retrieval.compute(predictions=texts, references=text_to_image, image_embeds=images, modality="audio")
    renamed = {k.replace("image", "audio"): v for k, v in image_keys.items()}
    assert audio_keys == renamed
    assert "audio_to_text_recall@1" in audio_keys and "text_to_audio_median_rank" in audio_keys
    with pytest.raises(ValueError, match="modality"):
        retrieval.compute(predictions=texts, references=text_to_image, image_embeds=images, modality="audio clip")
