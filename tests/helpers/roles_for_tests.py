"""Roles whose rewards vary on the random text of the tiny model, so GSPO has signal in tests."""

from tracer_pl.core.roles import Proposer, Reviewer


class ByteSumProposer(Proposer):
    """Reward from the bytes of the text: -1, 0 or +1."""

    def reward(self, text, view):
        return float(sum(text.encode()) % 3 - 1)


class ByteSumReviewer(Reviewer):
    """The same byte-sum reward for reviews (the tiny model's reviews are unparseable: always 0 otherwise)."""

    def reward(self, text, view):
        return float(sum(text.encode()) % 3 - 1)


class Verifier(Reviewer):
    """A third kind of role: its own name (so its own adapter), prompt and reward."""

    name = "verifier"

    def render(self, view):
        return f"Verify step by step.\n{super().render(view)}"

    def reward(self, text, view):
        return float(len(text.encode()) % 2) * 2 - 1
