"""Entry point of `python -m mm_hf.apps.sentiment` (see the package docstring)."""

import sys

from ...errors import run_cli
from .cli import main

sys.argv[0] = "mm_hf.apps.sentiment"  # error messages and usage name the command, not __main__.py
run_cli(main)
