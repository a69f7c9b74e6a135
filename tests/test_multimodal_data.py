"""load_multimodal_splits / encode_labels: paths, missing modalities, bad rows, labels of every problem type."""

import csv
import json
import logging
import os

import datasets
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mm_hf.args import DataArguments
from mm_hf.data.loading import DataError
from mm_hf.data.multimodal import LabelSpace, MultimodalColumns, encode_labels, load_multimodal_splits

COLUMNS = MultimodalColumns(
    image="img", text="caption", audio="clip", numeric=["age"], categorical=["city"], labels=["label"]
)


@pytest.fixture
def media(tmp_path):
    """tmp_path/media/{a,b}.png and tone.wav."""
    folder = tmp_path / "media"
    folder.mkdir()
    for name, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        Image.new("RGB", (4, 4), color).save(folder / f"{name}.png")
    sf.write(folder / "tone.wav", np.sin(np.linspace(0, 100, 800)).astype(np.float32), 8000)
    return folder


def write(path, rows):
    """rows (list of dicts) as CSV or JSONL, chosen by the file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return str(path)


def row(img="media/a.png", caption="a red square", clip="media/tone.wav", age=30, city="oslo", label="cat"):
    return {"img": img, "caption": caption, "clip": clip, "age": age, "city": city, "label": label}


def load(tmp_path, columns=COLUMNS, problem_type="single_label_classification", skip_bad=False, **files):
    args = DataArguments(train_val_split=0.0, **files)
    return load_multimodal_splits(args, columns, problem_type, cache_dir=str(tmp_path / "cache"), skip_bad=skip_bad)


def labels_of(tmp_path, label_rows, problem_type, labels=("label",), suffix=".jsonl"):
    """Labels and label space of a train file holding one text input plus the given label cells."""
    rows = [{"caption": f"item {i}", **r} for i, r in enumerate(label_rows)]
    columns = MultimodalColumns(text="caption", labels=list(labels))
    splits, space = load(tmp_path, columns, problem_type, train_file=write(tmp_path / f"train{suffix}", rows))
    return splits["train"]["labels"], space


# ------------------------------------------------------------------------------ paths and missing modalities


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_relative_and_absolute_paths_resolve_and_missing_modalities_stay_none(tmp_path, media, suffix):
    absolute = str(media / "b.png")
    clip = "../media/tone.wav"
    train = write(tmp_path / "data" / f"train{suffix}", [
        row(img="../media/a.png", clip=clip), row(img=absolute, caption="", clip=clip, label="dog"),
        row(img=None, clip="", age=None, label="cat"), row(img="", caption=None, clip=None, city="", label="dog"),
    ])  # fmt: skip
    valid = write(tmp_path / f"valid{suffix}", [row(clip=str(media / "tone.wav"), label="dog")])
    splits, space = load(tmp_path, train_file=train, validation_file=valid)
    train = splits["train"]
    assert train.column_names == ["image", "text", "audio", "age", "city", "labels"]
    local = [os.path.normpath(p) if p else p for p in train["image"]]  # joined as in loading.py: data/../media/a.png
    assert local == [str(media / "a.png"), absolute, None, None] and all(os.path.isabs(p) for p in local[:2])
    assert train["text"] == ["a red square", None, "a red square", None]
    assert [os.path.normpath(p) if p else p for p in train["audio"]] == [str(media / "tone.wav")] * 2 + [None, None]
    assert train["age"][2] is None and train["city"][3] in (None, "")  # raw: TabularProcessor handles them
    assert splits["validation"]["image"] == [str(media / "a.png")]  # relative to the validation file's folder
    assert space == LabelSpace("single_label_classification", ["cat", "dog"])
    assert train.features["labels"].names == ["cat", "dog"] and train["labels"] == [0, 1, 0, 1]
    assert COLUMNS.modalities == ["image", "text", "audio", "tabular"]


def test_a_row_without_any_input_is_an_error_naming_file_and_row(tmp_path, media):
    empty = row(img="", caption=None, clip="", age=None, city=None)
    train = write(tmp_path / "train.csv", [row(), row(), empty])
    with pytest.raises(DataError, match=r"train\.csv: 1 unusable row\(s\): row 2: every input is missing"):
        load(tmp_path, train_file=train)


def test_a_missing_media_file_is_an_error_naming_table_row_and_path(tmp_path, media):
    train = write(tmp_path / "train.jsonl", [row(), row(clip="media/nope.wav")])
    with pytest.raises(DataError, match=r"train\.jsonl: .*row 1: audio file not found: .*media/nope\.wav"):
        load(tmp_path, train_file=train)


def test_skip_bad_drops_and_counts_rows_and_later_errors_name_original_rows(tmp_path, media, caplog):
    rows = [row(), row(img="gone.png"), row(img=None, caption="", clip=None, age=None, city=None), row(label="dog")]
    train = write(tmp_path / "train.csv", rows)
    with caplog.at_level(logging.WARNING):
        splits, _ = load(tmp_path, train_file=train, skip_bad=True)
    assert len(splits["train"]) == 2 and splits["train"]["labels"] == [0, 1]
    assert "dropped 2 of 4 row(s)" in caplog.text and "gone.png" in caplog.text
    write(tmp_path / "train.csv", [*rows, row(label=None)])
    with pytest.raises(DataError, match=r"train\.csv: row 4 has no label in column 'label'"):
        load(tmp_path, train_file=train, skip_bad=True)


def test_missing_columns_and_empty_splits_are_named(tmp_path, media):
    train = write(tmp_path / "train.csv", [{"img": "media/a.png", "text": "x", "label": "cat"}])
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) 'caption' \(text\).*available: img, text"):
        load(tmp_path, train_file=train)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header.csv").write_text("img,caption,clip,age,city,label\n")
    for empty in ("empty.jsonl", "header.csv"):
        with pytest.raises(DataError, match=f"the validation split is empty: .*{empty}"):
            load(tmp_path, train_file=write(tmp_path / "t.jsonl", [row()]), validation_file=str(tmp_path / empty))
    with pytest.raises(ValueError, match="more than one role"):
        load(tmp_path, MultimodalColumns(text="caption", numeric=["label"], labels="label"), train_file=train)


def test_hub_media_stay_undecoded_dicts(tmp_path, media):
    from datasets import Audio, Dataset

    root = tmp_path / "hub"
    for split, n in (("train", 4), ("valid", 2)):
        paths = [str(media / "a.png"), None] * (n // 2)
        ds = Dataset.from_dict({"picture": paths, "sound": [None, str(media / "tone.wav")] * (n // 2),
                                "y": ["cat", "dog"] * (n // 2)})  # fmt: skip
        ds = ds.cast_column("picture", datasets.Image()).cast_column("sound", Audio(decode=False))
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    columns = MultimodalColumns(image="picture", audio="sound", labels=["y"])
    splits, space = load(tmp_path, columns, dataset_name=str(root))
    assert set(splits) == {"train", "validation"} and space.names == ["cat", "dog"]
    first = splits["train"][0]
    assert isinstance(first["image"], dict) and set(first["image"]) == {"bytes", "path"} and first["audio"] is None
    assert splits["train"][1]["image"] is None and splits["train"][1]["audio"]["path"] == str(media / "tone.wav")


# --------------------------------------------------------------------------------------------------- labels


def test_single_label_unseen_eval_label_is_an_error(tmp_path, media):
    train = write(tmp_path / "train.csv", [row(label="cat"), row(label="dog")])
    valid = write(tmp_path / "valid.csv", [row(label="dog"), row(label="bird")])
    with pytest.raises(DataError, match=r"valid\.csv: row 1: label 'bird' in the validation split never occurs"):
        load(tmp_path, train_file=train, validation_file=valid)


def test_integer_class_ids_sort_as_numbers(tmp_path):
    labels, space = labels_of(tmp_path, [{"label": 10}, {"label": 2}, {"label": 1}], "single_label_classification")
    assert space.names == ["1", "2", "10"] and labels == [2, 1, 0]


def test_multi_label_from_a_list_column(tmp_path):
    cells = [{"label": ["b", "a"]}, {"label": []}, {"label": ["c"]}]
    labels, space = labels_of(tmp_path, cells, "multi_label_classification")
    assert space.names == ["a", "b", "c"] and space.num_labels == 3
    assert labels == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("delimiter", ["|", ",", ";"])
def test_multi_label_from_a_delimited_string(tmp_path, delimiter):
    cells = [{"label": f"sports{delimiter} news"}, {"label": "news"}, {"label": f"art{delimiter}sports"}]
    labels, space = labels_of(tmp_path, cells, "multi_label_classification", suffix=".csv")
    assert space.names == ["art", "news", "sports"]
    assert labels == [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]


def test_multi_label_from_several_0_1_columns(tmp_path):
    cells = [{"toxic": 1, "spam": 0}, {"toxic": 0, "spam": 1}, {"toxic": 1, "spam": 1}]
    labels, space = labels_of(tmp_path, cells, "multi_label_classification", labels=("toxic", "spam"), suffix=".csv")
    assert space.names == ["toxic", "spam"] and labels == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    with pytest.raises(DataError, match=r"row 1: label column 'spam' must hold 0/1.*got 2"):
        labels_of(tmp_path, [{"toxic": 1, "spam": 0}, {"toxic": 0, "spam": 2}], "multi_label_classification",
                  labels=("toxic", "spam"))  # fmt: skip


def test_multi_label_unseen_eval_label_is_an_error(tmp_path, media):
    train = write(tmp_path / "train.jsonl", [row(label=["a"]), row(label=["b"])])
    valid = write(tmp_path / "valid.jsonl", [row(label=["a", "z"])])
    with pytest.raises(DataError, match=r"valid\.jsonl: row 0: label\(s\) \['z'\]"):
        load(tmp_path, problem_type="multi_label_classification", train_file=train, validation_file=valid)


@pytest.mark.parametrize(
    "values, names, expected",
    [
        (["yes", "no", "yes"], ["no", "yes"], [1.0, 0.0, 1.0]),
        ([True, False, False], ["False", "True"], [1.0, 0.0, 0.0]),
        ([0, 1, 1], ["0", "1"], [0.0, 1.0, 1.0]),
        (["positive", "negative", "negative"], ["negative", "positive"], [1.0, 0.0, 0.0]),
    ],
)
def test_binary_labels_record_the_positive_value(tmp_path, values, names, expected):
    labels, space = labels_of(tmp_path, [{"label": v} for v in values], "binary_classification")
    assert space.names == names and space.num_labels == 1 and space.id2label[1] == names[1]
    assert labels == expected


def test_binary_needs_two_values(tmp_path):
    with pytest.raises(DataError, match="exactly 2 distinct values.*'a', 'b', 'c'"):
        labels_of(tmp_path, [{"label": v} for v in "abc"], "binary_classification")
    with pytest.raises(DataError, match="must be 0/1"):
        labels_of(tmp_path, [{"label": v} for v in (0, 1, 2)], "binary_classification")


def test_regression_targets_and_missing_target_error(tmp_path):
    labels, space = labels_of(tmp_path, [{"label": 1.5}, {"label": 2}], "regression")
    assert labels == [1.5, 2.0] and space.names == ["label"] and space.num_labels == 1
    cells = [{"price": 1.0, "rating": 3}, {"price": 2.5, "rating": 4}]
    labels, space = labels_of(tmp_path, cells, "regression", labels=("price", "rating"))
    assert labels == [[1.0, 3.0], [2.5, 4.0]] and space.num_labels == 2
    with pytest.raises(DataError, match=r"train\.csv: row 1: regression target 'label' is None"):
        labels_of(tmp_path, [{"label": 1.5}, {"label": None}, {"label": 2}], "regression", suffix=".csv")
    with pytest.raises(DataError, match=r"row 0: regression target 'label' is 'abc'"):
        labels_of(tmp_path, [{"label": "abc"}], "regression")


# ---------------------------------------------------------------------------------------------- split handling


def test_validation_is_held_out_from_train_and_limits_apply(tmp_path, media):
    rows = [row(label=["cat", "dog"][i % 2], age=i) for i in range(20)]
    args = DataArguments(train_file=write(tmp_path / "train.csv", rows), train_val_split=0.25, max_train_samples=10)
    splits, _ = load_multimodal_splits(args, COLUMNS, "single_label_classification", cache_dir=str(tmp_path / "c"))
    assert len(splits["train"]) == 10 and len(splits["validation"]) == 5
    assert sorted(splits["validation"]["labels"]).count(0) in (2, 3)  # stratified
    seen = set(splits["train"]["age"]) | set(splits["validation"]["age"])
    assert len(seen) == 15 and set(splits["validation"]["age"]).isdisjoint(splits["train"]["age"])


def test_encode_labels_gives_one_label_space_per_task():
    """Multi-task: one call per task's label column(s)."""
    train = datasets.Dataset.from_dict({"kind": ["a", "b"], "price": [1.0, 2.0]})
    valid = datasets.Dataset.from_dict({"kind": ["b"], "price": [3.0]})
    splits = {"train": train, "validation": valid}
    kinds, kind_space = encode_labels(splits, ["kind"], "single_label_classification")
    prices, price_space = encode_labels(splits, ["price"], "regression")
    assert kinds == {"train": [0, 1], "validation": [1]} and prices["validation"] == [3.0]
    assert kind_space.label2id == {"a": 0, "b": 1} and price_space.names == ["price"]
    assert LabelSpace.from_dict(json.loads(json.dumps(kind_space.to_dict()))) == kind_space
