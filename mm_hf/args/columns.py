"""Column flags: one spelling per concept in every recipe, the transformers example spellings kept as aliases."""

import dataclasses
from dataclasses import dataclass, field

from ..errors import UserError

# One spelling per column concept in every recipe; the other spellings stay accepted as aliases, on the command line
# and as --config keys: the transformers example scripts' (run_image_classification.py --image_column_name,
# run_audio_classification.py --audio_column_name, both --label_column_name) and text <-> caption (run_clip.py
# says --caption_column, the fusion recipes --text_column: one concept, the text beside the media).
COLUMN_ALIASES = {
    "image_column": ["image_column_name"],
    "audio_column": ["audio_column_name"],
    "label_column": ["label_column_name"],
    "text_column": ["caption_column"],
    "caption_column": ["text_column"],
}


def column_field(name: str, help: str, default=None, default_factory=dataclasses.MISSING):
    """A column flag `--name` that also answers to its COLUMN_ALIASES (underscored and dashed, as argparse shows)."""
    names = COLUMN_ALIASES[name]
    aliases = [f"--{a}" for a in names] + [f"--{a.replace('_', '-')}" for a in names]
    metadata = {"help": help, "aliases": aliases}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# Column mixins: a recipe's argument dataclass inherits the columns it reads, so each flag is declared once.
@dataclass
class LabelColumnArguments:
    label_column: str = column_field("label_column", "Column holding class labels.", default="label")


@dataclass
class ImageColumnArguments:
    image_column: str = column_field("image_column", "Column holding images or image paths.", default="image")


@dataclass
class AudioColumnArguments:
    audio_column: str = column_field("audio_column", "Column holding audio clips or audio paths.", default="audio")


@dataclass
class CaptionColumnArguments:
    caption_column: str = column_field(
        "caption_column", "Column holding captions (a string or a list of strings).", default="caption"
    )


def media_column(args, modality: str, explicit: set[str]) -> str:
    """The column of `modality` (image or audio) in `args` (ImageColumnArguments + AudioColumnArguments). The other
    modality's column flag, if the user set it (`explicit`, as `explicit_flags` gives), is refused, not ignored."""
    unread = "image" if modality == "audio" else "audio"
    if f"{unread}_column" in explicit:
        raise UserError(f"--{unread}_column: this is an {modality}-text model; its media come from --{modality}_column")
    return getattr(args, f"{modality}_column")
