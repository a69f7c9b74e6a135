"""Worked examples of the article's applications: a config, a data builder in the layout real data has, the
metrics the field reports, and a `make demo-<application>` that shows the modalities are needed together."""
