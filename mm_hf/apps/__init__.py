"""The article's applications as worked examples: a config, a data builder and a demo per application."""
