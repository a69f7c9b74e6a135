"""Text corruptions: `name(text, severity, rng)` -> a string, severity 1..5."""

from __future__ import annotations

import numpy as np

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def typos(text: str, severity: int, rng: np.random.Generator) -> str:
    """Keyboard-slip typos on a share [2, 5, 10, 15, 20] % of the letters and digits: each hit character is swapped
    with the next one, dropped, or followed by an inserted random letter (one third each)."""
    share = (0.02, 0.05, 0.1, 0.15, 0.2)[severity - 1]
    chars = list(str(text))
    # All draws up front, one per character, so every severity uses the same ones (hits nest as severity grows).
    hit = rng.uniform(size=len(chars)) < share
    operation = rng.integers(0, 3, size=len(chars))
    inserted = _LETTERS[rng.integers(0, len(_LETTERS), size=len(chars))]
    out, i = [], 0
    while i < len(chars):
        char = chars[i]
        if not (hit[i] and char.isalnum()):
            out.append(char)
        elif operation[i] == 0 and i + 1 < len(chars):  # swap with the next character
            out.extend((chars[i + 1], char))
            i += 1
        elif operation[i] == 1:  # drop
            pass
        else:  # insert after (also a swap at the very end, which has no next character)
            out.extend((char, str(inserted[i])))
        i += 1
    return "".join(out)


def word_dropout(text: str, severity: int, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word with probability [.05, .1, .2, .3, .4], keeping at least one word."""
    share = (0.05, 0.1, 0.2, 0.3, 0.4)[severity - 1]
    words = str(text).split()
    if not words:
        return str(text)
    draws = rng.uniform(size=len(words))
    kept = [word for word, u in zip(words, draws, strict=True) if u >= share]
    return " ".join(kept) if kept else words[int(draws.argmax())]
