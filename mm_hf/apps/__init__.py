"""Worked applications of the recipes: a data builder in the layout real data has, a config, and the report the
field reads (`python -m mm_hf.apps.<application> --help`)."""
