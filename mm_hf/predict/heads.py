"""Logits -> the prediction fields of each output row, per problem type of a head.

- single_label_classification: `label` (top-1), `score` (its probability), `top_k` [{label, score}] (softmax);
- multi_label_classification: `labels` (every label with probability >= threshold), `scores` {label: probability};
- binary_classification: `label` (the positive label when its probability >= threshold), `probability` (of the
  positive label, the second of the head's [negative, positive]);
- regression: `values` {target: value}.
A multi-task fusion head prefixes its fields with its task name (`<task>.label`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Head:
    problem_type: str
    labels: list[str]  # class / label / target names ([negative, positive] for binary)
    top_k: int = 5
    threshold: float = 0.5
    prefix: str = ""  # "<task>." for a head of a multi-task model

    def fields(self, logits: torch.Tensor) -> list[dict]:
        """One dict of prediction fields per row of `logits` (B, outputs)."""
        logits = logits.float()
        if self.problem_type == "single_label_classification":
            probabilities = logits.softmax(-1)
            scores, indices = probabilities.topk(min(self.top_k, len(self.labels)), dim=-1)
            rows = []
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True):
                top = [{"label": self.labels[i], "score": s} for s, i in zip(row_scores, row_indices, strict=True)]
                rows.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
        elif self.problem_type == "multi_label_classification":
            rows = [
                {"labels": [n for n, p in zip(self.labels, row, strict=True) if p >= self.threshold],
                 "scores": dict(zip(self.labels, row, strict=True))}
                for row in logits.sigmoid().tolist()
            ]  # fmt: skip
        elif self.problem_type == "binary_classification":
            negative, positive = self.labels
            rows = [
                {"label": positive if p >= self.threshold else negative, "probability": p}
                for p in logits[:, 0].sigmoid().tolist()
            ]
        else:
            rows = [{"values": dict(zip(self.labels, row, strict=True))} for row in logits.tolist()]
        return [{self.prefix + key: value for key, value in row.items()} for row in rows]

    def template(self) -> dict:
        """The fields of one row, every key present (what fixes the output's columns)."""
        outputs = 1 if self.problem_type == "binary_classification" else len(self.labels)
        return self.fields(torch.zeros(1, outputs))[0]

    def empty(self) -> dict:
        """The fields of an error row: every key, no value."""
        return dict.fromkeys(self.template())
