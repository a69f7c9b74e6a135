"""A DataLoader collate_fn that turns a sample which cannot be decoded into an error instead of a crash: the batch
runs of `python -m mm_hf.predict` (an error row) and of `python -m mm_hf.index` (a skipped item)."""

import torch


class Collate:
    """DataLoader collate_fn: items (position, model inputs {column: value}, anything carried along) -> (positions of
    the good rows, stacked model inputs or None, {position: error}, {position: what the item carried}) (predict
    carries each row's id and kept columns).

    The whole batch goes through `transform` at once (audio is padded per batch, as in the recipes); when that fails,
    each row is tried alone to find the bad ones, and the others are transformed together again. Runs in the
    workers, so decoding happens there; a class, so it pickles into spawned workers.
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, items):
        heads = {position: head for position, _, head in items}
        positions = [position for position, _, _ in items]
        rows = [row for _, row, _ in items]
        try:
            return positions, self._stack(rows), {}, heads
        except Exception:  # noqa: BLE001 (some sample is bad: found below, one row at a time)
            pass
        good, errors = [], {}
        for position, row, _ in items:
            try:
                self._stack([row])
                good.append((position, row))
            except Exception as error:  # noqa: BLE001 (any failure of one sample is that sample's error row)
                message = str(error).splitlines()[0] if str(error) else ""
                errors[position] = f"{type(error).__name__}: {message}"
        if not good:
            return [], None, errors, heads
        return [p for p, _ in good], self._stack([row for _, row in good]), errors, heads

    def _stack(self, rows: list[dict]) -> dict:
        batch = {key: [row[key] for row in rows] for key in rows[0]}
        out = self.transform(batch)
        return {key: torch.stack([torch.as_tensor(v) for v in values]) for key, values in out.items()}
