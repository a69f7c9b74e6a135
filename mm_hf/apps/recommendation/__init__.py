"""Recommendation: users, items with an image and a title, an interaction log; the fusion recipe scores (user, item)
pairs and each user's held-out items are ranked among sampled negatives (`--problem_type ranking`).

- `data`: the MovieLens/Amazon-style log layout, a synthetic log, and the (user, item) rows for the recipe;
- `demo`: the model, its trained and test-time ablations and the popularity baseline in one table
  (`python -m mm_hf.apps.recommendation`, `make demo-recommendation`).

Nothing is imported here, so `python -m mm_hf.apps.recommendation.data` runs that module cleanly as a script.
"""
