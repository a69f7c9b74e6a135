"""Entry point of `python -m mm_hf.evaluate` (see the package docstring)."""

from ..errors import run_cli
from .cli import main

run_cli(main)
