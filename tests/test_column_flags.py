"""Column flags: one spelling per concept in every recipe, the transformers example spellings as aliases (command
line and --config keys, counted as the user's flags), loader errors naming the running recipe's flag, and each
recipe's default model fitting its modality."""

import csv

import pytest
import yaml
from conftest import load_recipe
from transformers import HfArgumentParser

from mm_hf.args import DataArguments, explicit_flags, media_column, parse_args
from mm_hf.data.loading import load_classification_splits
from mm_hf.data.multimodal import MultimodalColumns, load_multimodal_splits
from mm_hf.data.pairs import load_caption_splits
from mm_hf.errors import DataError, UserError

RECIPES = ("clip_imagecls", "audio_cls", "clip_retrieval", "fusion_imagetext_cls", "video_cls")
TYPES = {name: load_recipe(name).ARGUMENT_TYPES for name in RECIPES}
# (recipe, the field, another spelling of its flag): every column flag each recipe reads.
SPELLINGS = [
    ("clip_imagecls", "image_column", "image_column_name"),
    ("clip_imagecls", "label_column", "label_column_name"),
    ("audio_cls", "audio_column", "audio_column_name"),
    ("audio_cls", "label_column", "label_column_name"),
    ("clip_retrieval", "image_column", "image_column_name"),
    ("clip_retrieval", "audio_column", "audio_column_name"),
    ("clip_retrieval", "caption_column", "text_column"),
    ("fusion_imagetext_cls", "image_column", "image_column_name"),
    ("fusion_imagetext_cls", "text_column", "caption_column"),
    ("fusion_imagetext_cls", "audio_column", "audio_column_name"),
    ("fusion_imagetext_cls", "label_column", "label_column_name"),
    ("video_cls", "text_column", "caption_column"),
    ("video_cls", "audio_column", "audio_column_name"),
    ("video_cls", "label_column", "label_column_name"),
]


def value_of(parsed, name):
    value = next(getattr(a, name) for a in parsed if hasattr(a, name))
    return value[0] if isinstance(value, list) else value  # the fusion recipes' label_column is a list


def write_yaml(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "o", **values}))
    return str(path)


@pytest.mark.parametrize(("recipe", "name", "alias"), SPELLINGS)
def test_both_spellings_parse_to_the_same_field_on_cli_and_in_yaml(recipe, name, alias, tmp_path):
    types = TYPES[recipe]
    for spelling in (name, alias, alias.replace("_", "-")):
        argv = ["--output_dir", "o", f"--{spelling}", "my_col"]
        assert value_of(parse_args(types, argv), name) == "my_col", spelling
        assert name in explicit_flags(argv, types)  # an alias is the user's flag: no recipe default replaces it
    for key in (name, alias):
        config = write_yaml(tmp_path, {key: "from_yaml"})
        assert value_of(parse_args(types, ["--config", config]), name) == "from_yaml", key
        assert explicit_flags(["--config", config], types) == {name, "output_dir"}
    # the command line wins over the YAML, whichever spelling each uses
    config = write_yaml(tmp_path, {alias: "from_yaml"})
    assert value_of(parse_args(types, ["--config", config, f"--{name}", "from_cli"]), name) == "from_cli"
    config = write_yaml(tmp_path, {name: "from_yaml"})
    assert value_of(parse_args(types, ["--config", config, f"--{alias}", "from_cli"]), name) == "from_cli"


def test_every_recipe_spells_each_column_concept_alike():
    """An option string means the same concept in every recipe, and old spellings are only aliases."""
    concept = {}  # option -> the set of option strings of its flag
    for recipe, types in TYPES.items():
        for action in HfArgumentParser(types)._actions:
            options = [o for o in action.option_strings if o.startswith("--") and "column" in o]
            if not options or action.dest == "length_column_name":  # TrainingArguments' own, not a data column
                continue
            assert not action.dest.endswith("_column_name"), (recipe, action.dest)
            for option in options:
                assert concept.setdefault(option, set(options)) == set(options), (recipe, option)
    assert concept["--image_column_name"] >= {"--image_column", "--image-column-name"}
    assert concept["--audio_column"] >= {"--audio_column_name"} and concept["--label_column"] >= {"--label_column_name"}
    assert concept["--caption_column"] == concept["--text_column"]


def test_yaml_with_both_spellings_of_one_flag_is_refused(tmp_path):
    config = write_yaml(tmp_path, {"image_column": "a", "image_column_name": "b"})
    with pytest.raises(UserError, match=r"sets image_column twice \(image_column and image_column_name are one flag\)"):
        parse_args(TYPES["clip_imagecls"], ["--config", config])
    config = write_yaml(tmp_path, {"no_augment": True})  # a switch's negative form is no key
    with pytest.raises(UserError, match=r"unknown key\(s\) in --config .*no_augment"):
        parse_args(TYPES["clip_imagecls"], ["--config", config])


def test_default_models_fit_each_recipe_modality():
    defaults = {name: parse_args(TYPES[name], ["--output_dir", "o"])[0] for name in RECIPES}
    assert defaults["audio_cls"].model_name_or_path == "facebook/wav2vec2-base"  # run_audio_classification.py's
    assert defaults["clip_imagecls"].model_name_or_path == "openai/clip-vit-base-patch32"
    assert defaults["clip_retrieval"].model_name_or_path == "openai/clip-vit-base-patch32"
    for fusion in ("fusion_imagetext_cls", "video_cls"):  # no default encoder: one per modality the columns use
        model = defaults[fusion]
        assert (model.vision_model_name_or_path, model.text_model_name_or_path, model.audio_model_name_or_path) == (
            None,
            None,
            None,
        )


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_audio_recipe_missing_column_names_audio_column(tiny_wav2vec2, tmp_path):
    """Through the recipe: the error names --audio_column (it used to say --image_column_name)."""
    train = write_csv(tmp_path / "train.csv", ("file", "label"), [("a.wav", "x"), ("b.wav", "y")])
    argv = ["--model_name_or_path", str(tiny_wav2vec2), "--train_file", str(train), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(
        DataError, match=r"train\.csv: missing column\(s\) 'audio'; .*pass the right name\(s\) with"
    ) as e:
        load_recipe("audio_cls").main(argv + ["--use_cpu", "true", "--report_to", "none"])
    assert e.value.args[0].endswith("with --audio_column") and "image" not in e.value.args[0]


def test_loader_errors_name_the_flags_given(tmp_path):
    train = write_csv(tmp_path / "train.csv", ("path", "class"), [("a.png", "x"), ("b.png", "y")])
    data = DataArguments(train_file=str(train))
    with pytest.raises(
        DataError, match=r"missing column\(s\) 'image', 'label'; .*with --image_column / --label_column$"
    ):
        load_classification_splits(data, "image", "label", input_flag="--image_column")
    with pytest.raises(DataError, match=r"missing column\(s\) 'label'; available: path, class; .*--label_column$"):
        load_classification_splits(data, "path", "label", input_flag="--audio_column")
    single = write_csv(tmp_path / "single.csv", ("path", "label"), [("a.png", "x"), ("b.png", "x")])
    with pytest.raises(DataError, match=r"single class \('x'\).*check that --label_column label is the column"):
        load_classification_splits(DataArguments(train_file=str(single)), "path", "label", input_flag="--image_column")
    pairs = write_csv(tmp_path / "pairs.csv", ("clip", "text"), [("a.wav", "a dog")])
    with pytest.raises(
        DataError, match=r"missing column\(s\) 'audio', 'caption'; .*--audio_column / --caption_column$"
    ):
        load_caption_splits(DataArguments(train_file=str(pairs)), "audio", "caption", media_flag="--audio_column")


def test_fusion_loader_missing_columns_name_their_flags(tmp_path):
    train = write_csv(tmp_path / "train.csv", ("img", "title", "price", "y"), [("a.png", "t", 1.0, "x")])
    columns = MultimodalColumns(image="img", text="report", numeric=["price", "age"], labels=["label"])
    with pytest.raises(DataError, match=r"'report' \(text\), 'age' \(numeric\), 'label' \(label\); available: "
                       r"img, title, price, y; pass the right name\(s\) with --text_column / --numeric_columns / "
                       r"--label_column$"):  # fmt: skip
        load_multimodal_splits(DataArguments(train_file=str(train)), columns, "single_label_classification")


def test_each_fusion_recipe_refuses_the_other_ones_media_column(tmp_path):
    """FusionDataArguments serves both fusion recipes: a column flag the running one does not read is refused."""
    argv = ["--output_dir", str(tmp_path / "o"), "--train_file", "t.csv", "--label_column", "y"]
    with pytest.raises(UserError, match=r"--image_column: still images are for recipes/fusion_imagetext_cls\.py"):
        load_recipe("video_cls").main([*argv, "--video_column", "clip", "--image_column_name", "frame"])
    with pytest.raises(UserError, match=r"--video_column: videos .* are for recipes/video_cls\.py"):
        load_recipe("fusion_imagetext_cls").main([*argv, "--image_column", "img", "--video_column", "clip"])


def test_retrieval_refuses_the_column_flag_of_the_other_modality(tiny_vtde, tmp_path):
    """An image-text model reads --image_column: an --audio_column (either spelling) is refused, not ignored."""
    argv = ["--model_name_or_path", str(tiny_vtde), "--output_dir", str(tmp_path / "o"), "--train_file", "t.csv"]
    for flag in ("--audio_column", "--audio_column_name"):
        with pytest.raises(UserError, match=r"--audio_column: this is an image-text model; .* from --image_column"):
            load_recipe("clip_retrieval").main([*argv, flag, "clip"])
    # an audio-text model (CLAP) likewise refuses --image_column, and reads --audio_column
    ret_args = parse_args(TYPES["clip_retrieval"], ["--output_dir", "o", "--audio_column", "clip"])[3]
    assert media_column(ret_args, "audio", {"audio_column"}) == "clip"
    with pytest.raises(UserError, match=r"--image_column: this is an audio-text model; .* from --audio_column"):
        media_column(ret_args, "audio", {"image_column", "audio_column"})
