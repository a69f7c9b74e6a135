"""Quality benchmarks: mm-hf recipes against plain baselines on real weights (`make bench-quality`)."""
