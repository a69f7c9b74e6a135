"""Recommendation data: an interaction log in MovieLens/Amazon layout, and the (user, item) rows the fusion recipe
scores, with each user's last interactions held out and ranked among sampled negatives.

The log layout (what `write_ranking_splits` reads, from a real dataset or from `write_synthetic_log`):

    items.csv         item_id, title, image (path relative to items.csv)   MovieLens movies.csv + posters /
                                                                           Amazon meta: parent_asin, title, images
    users.csv         user_id, <user feature columns> (optional)           MovieLens 1M users.dat: gender, age, ...
    interactions.csv  user_id, item_id, timestamp [, rating]               MovieLens ratings.csv / Amazon reviews

`write_ranking_splits` writes `pairs/{train,validation,test}.jsonl`: one row per (user, candidate item) with the
item's image and title, the user's features and `label` (1: the user interacted with it, 0: a sampled negative).
Per user, by time: the last `test_items` interactions are the test positives, the `validation_items` before them
the validation ones, the rest train; every positive of train gets `train_negatives` negatives, and each user's
validation / test positives are ranked among `validation_negatives` / `test_negatives` items the user never
interacted with (sampled uniformly, as NCF- and SASRec-style evaluations do).
"""

import argparse
import csv
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from ...data.synthetic import COLOURS, LARGE_WORDS, SMALL_WORDS

BRANDS = ("acme", "zenith", "orbit")
# An item's category is said only by the thing its title names (two words each); its colour only shows in its image.
CATEGORIES = {"furniture": ("chair", "lamp"), "storage": ("box", "bag"), "glassware": ("bottle", "vase")}
# User features that carry (most of) a user's taste: the region their favourite colour, the age group their
# favourite category; 15 % of users like something else than their group does, as real profiles only hint at taste.
REGIONS = {"north": "red", "south": "blue", "west": "green"}
AGE_GROUPS = {"18-29": "furniture", "30-49": "storage", "50+": "glassware"}
PROFILE_AGREEMENT = 0.85
# Interaction odds by how many of (colour, category) suit the user: only an item matching both is strongly
# preferred, so neither the image nor the title alone (nor the user alone) ranks the held-out items well.
AFFINITY = {2: 1.0, 1: 0.05, 0: 0.02}


def _product_image(rng: np.random.Generator, colour, size: int) -> Image.Image:
    """A product shot: a noisy `colour` object (disc or box, at a random place) on a light, noisy background."""
    background = rng.integers(200, 240)
    pixels = np.full((size, size, 3), background, np.float32) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    x0, y0 = (int(v) for v in rng.integers(0, size // 3, 2))
    x1, y1 = (int(v) for v in rng.integers(2 * size // 3, size, 2))
    fill = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in colour)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return image


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_synthetic_log(
    output_dir: str,
    num_users: int = 120,
    num_items: int = 90,
    interactions: tuple[int, int] = (8, 12),
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, int]:
    """items.csv (+ images/), users.csv and interactions.csv in the layout above; returns the counts.

    An item has a colour (shown only by its image), a category (said only by the thing its title names: a chair
    or a lamp is furniture), a brand, a size word and a popularity; a user has a favourite colour and category,
    hinted at by their region and age group. A user's interactions are drawn by popularity x AFFINITY[number of matching attributes], so a
    held-out item is predictable only from image, title and user features together.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    colours, categories = list(COLOURS), list(CATEGORIES)
    items, item_attributes, popularity = [], [], rng.lognormal(0.0, 0.5, num_items)
    for i in range(num_items):
        colour, category = colours[i % len(colours)], categories[(i // len(colours)) % len(categories)]
        item_id = f"item{i:04d}"
        image = f"images/{item_id}.png"
        _product_image(rng, COLOURS[colour], image_size).save(os.path.join(output_dir, image))
        size = rng.choice(SMALL_WORDS + LARGE_WORDS)
        title = f"{rng.choice(BRANDS)} {size} {rng.choice(CATEGORIES[category])}"
        items.append({"item_id": item_id, "title": title, "image": image})
        item_attributes.append((colour, category))
    users, log = [], []
    regions, ages = {c: r for r, c in REGIONS.items()}, {c: a for a, c in AGE_GROUPS.items()}
    for u in range(num_users):
        colour, category = rng.choice(colours), rng.choice(categories)
        shown_colour = colour if rng.random() < PROFILE_AGREEMENT else rng.choice(colours)
        shown_category = category if rng.random() < PROFILE_AGREEMENT else rng.choice(categories)
        user_id = f"user{u:04d}"
        users.append({"user_id": user_id, "region": regions[shown_colour], "age_group": ages[shown_category]})
        matches = np.array([(c == colour) + (k == category) for c, k in item_attributes])
        weights = popularity * np.vectorize(AFFINITY.get)(matches)
        count = int(rng.integers(interactions[0], interactions[1] + 1))
        chosen = rng.choice(num_items, size=count, replace=False, p=weights / weights.sum())
        times = np.sort(rng.integers(1_600_000_000, 1_700_000_000, count))
        log += [
            {"user_id": user_id, "item_id": items[i]["item_id"], "timestamp": int(t)}
            for i, t in zip(chosen, times, strict=True)
        ]
    _write_csv(os.path.join(output_dir, "items.csv"), items)
    _write_csv(os.path.join(output_dir, "users.csv"), users)
    _write_csv(os.path.join(output_dir, "interactions.csv"), log)
    return {"users": num_users, "items": num_items, "interactions": len(log)}


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_ranking_splits(
    log_dir: str,
    output_dir: str | None = None,
    *,
    test_items: int = 3,
    validation_items: int = 2,
    train_negatives: int = 3,
    validation_negatives: int = 10,
    test_negatives: int = 22,
    min_train_items: int = 1,
    seed: int = 0,
) -> dict[str, str]:
    """`{train,validation,test}.jsonl` of (user, candidate item) rows from the log in `log_dir` (layout above);
    returns split -> file. Default `output_dir`: `<log_dir>/pairs`.

    Users with fewer than `test_items + validation_items + min_train_items` interactions are left out (they have
    nothing to learn from or to hold out). Columns: user_id, item_id, image (relative to the file), title, every
    users.csv column, label.
    """
    output_dir = output_dir or os.path.join(log_dir, "pairs")
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = {row["item_id"]: row for row in _read_csv(os.path.join(log_dir, "items.csv"))}
    users_path = os.path.join(log_dir, "users.csv")
    users = {row["user_id"]: row for row in _read_csv(users_path)} if os.path.exists(users_path) else {}
    history: dict[str, list[tuple[int, str]]] = {}
    for row in _read_csv(os.path.join(log_dir, "interactions.csv")):
        if row["item_id"] not in items:
            raise ValueError(f"{log_dir}/interactions.csv: item {row['item_id']!r} is not in items.csv")
        history.setdefault(row["user_id"], []).append((int(float(row["timestamp"])), row["item_id"]))
    image_base = os.path.relpath(log_dir, output_dir)
    item_ids = np.array(sorted(items))
    splits = {"train": [], "validation": [], "test": []}
    for user_id in sorted(history):
        seen = [item for _, item in sorted(history[user_id])]
        seen = list(dict.fromkeys(seen))  # a re-watched / re-bought item counts once, at its first time
        if len(seen) < test_items + validation_items + min_train_items:
            continue
        cut_test, cut_validation = len(seen) - test_items, len(seen) - test_items - validation_items
        positives = {"train": seen[:cut_validation], "validation": seen[cut_validation:cut_test],
                     "test": seen[cut_test:]}  # fmt: skip
        unseen = np.setdiff1d(item_ids, seen)
        negatives_per_split = {"train": train_negatives * len(positives["train"]),
                               "validation": validation_negatives, "test": test_negatives}  # fmt: skip
        for split, items_of_split in positives.items():
            size = min(negatives_per_split[split], len(unseen))
            negatives = rng.choice(unseen, size=size, replace=False).tolist()
            profile = {k: v for k, v in users.get(user_id, {}).items() if k != "user_id"}
            for item_id, label in [(i, 1) for i in items_of_split] + [(i, 0) for i in negatives]:
                item = items[item_id]
                image = os.path.join(image_base, item["image"]) if item.get("image") else None
                splits[split].append({"user_id": user_id, "item_id": item_id, "image": image,
                                      "title": item.get("title") or None, **profile, "label": label})  # fmt: skip
    files = {}
    for split, rows in splits.items():
        if not rows:
            raise ValueError(f"{log_dir}: no user has enough interactions for a {split} split")
        files[split] = os.path.join(output_dir, f"{split}.jsonl")
        with open(files[split], "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="(user, item) rows for recipes/fusion_imagetext_cls.py --problem_type ranking from an interaction "
        "log folder (items.csv, interactions.csv, optional users.csv; layout in the module docstring).",
    )
    parser.add_argument("log_dir", help="Folder with items.csv, interactions.csv (and users.csv).")
    parser.add_argument("--output_dir", default=None, help="Where {train,validation,test}.jsonl go (<log_dir>/pairs).")
    parser.add_argument("--test_items", type=int, default=3, help="Each user's last interactions held out for test.")
    parser.add_argument("--validation_items", type=int, default=2, help="The ones before them, for validation.")
    parser.add_argument("--train_negatives", type=int, default=3, help="Sampled negatives per training positive.")
    parser.add_argument("--validation_negatives", type=int, default=10, help="Negatives ranked per validation user.")
    parser.add_argument("--test_negatives", type=int, default=22, help="Negatives ranked per test user.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the negative sampling.")
    args = vars(parser.parse_args(argv))
    files = write_ranking_splits(args.pop("log_dir"), args.pop("output_dir"), **args)
    for split, path in files.items():
        print(f"{split}: {path}")
    return files


if __name__ == "__main__":
    main()
