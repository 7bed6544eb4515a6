"""Small problems, scripted answers and problem files that several test files build."""

import json

import lightning as L
import torch

from tracer_pl.core.problem import Problem

P42 = Problem(question="What is 6 times 7?", gold="42", dataset="gsm8k", uid="p42")
A42, A7, A5 = "6*7=42\nFinal answer: 42", "6+1=7\nFinal answer: 7", "Final answer: 5"
"""A right answer to P42, a wrong one, and another wrong one, as a proposer writes them."""


def sums_to_four(n=8):
    """``n`` problems "What is i + (4 - i)?": one-token answers, so the fake engine is right 1 time in 13."""
    return [Problem(question=f"What is {i} + {4 - i}?", gold="4", dataset="gsm8k", uid=f"p{i}") for i in range(n)]


class ProblemList(L.LightningDataModule):
    """A training data module over a fixed list of problems, in order (no shuffling, no state to resume)."""

    def __init__(self, problems, batch_size=2):
        super().__init__()
        self.problems, self.batch_size = list(problems), batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.problems, batch_size=self.batch_size, collate_fn=list)


def write_jsonl(path, rows):
    """Write ``rows`` (dicts, or strings written as they are) one per line to ``path``; returns ``path``."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path
