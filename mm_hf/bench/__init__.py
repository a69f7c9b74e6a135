"""The quality benchmark (`make bench-quality`): every classification recipe and strategy on real weights and
offline data, with plain baselines run side by side on the same splits.

- `data`: offline datasets written as class folders (grey digits, colour photo crops, espeak-ng speech).
- `baselines`: scikit-learn's probe on frozen features, the article's plain PyTorch loop, the transformers
  example scripts' defaults.
- `quality`: the driver (`python -m mm_hf.bench.quality`), its table and `bench_quality.json`.
- `speed`: `make bench`, every recipe and strategy's samples/s, data waiting vs compute and peak RSS next to the
  plain loop and the example scripts' pipeline (`bench.json`).
"""
