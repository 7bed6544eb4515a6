"""Metric keys, built in one place: what training, evaluation and ``tracer-pl report`` write and read.

Every key names its seat (role) from the run, never a fixed role name, so a third seat gets its own keys:

* ``train/<seat>/<quantity>`` -- reward statistics of the seat's candidate groups;
* ``gspo/<seat>/<quantity>`` -- the seat's GSPO updates (steps, loss, clip fraction, gradient norm, ...);
* ``controller/<seat>/<quantity>`` -- the seat's controller in training (speaking rate, worst average regret);
* ``controller/<seat>/<state>/<quantity>`` -- one controller state: ``visits``, ``avg_regret``,
  ``avg_p_<action>`` (average strategy) and ``p_<action>`` (current strategy), where ``<action>`` is the seat's
  speaking action (``refresh`` for a proposing seat, ``speak`` for a reviewing one);
* ``<stage>/<dataset>/<metric>`` -- evaluation, with ``<dataset>@<protocol>`` for extra protocols;
* ``<stage>/<dataset>/<seat>/p_<action>/<state>`` -- the speaking rate per controller state in evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

REGRET_BOUND_BATCH = "controller/regret_bound_batch"
"""Updates of one state that may share a strategy in a run (the regret bound's ``B``)."""
REGRET_UNBOUNDED = "controller/regret_unbounded"
"""Set by runs whose controller values are importance weighted, so no regret bound holds."""
SKIPPED_NONFINITE = "controller/skipped_nonfinite"
"""Decisions whose values were not finite and so did not update a controller."""


def seat_key(section: str, seat: str, quantity: str) -> str:
    """``<section>/<seat>/<quantity>``, e.g. ``gspo/proposer/loss`` or ``controller/reviewer/p_speak``."""
    return f"{section}/{seat}/{quantity}"


def speaking_rate(action: str) -> str:
    """The quantity of the probability (or rate) of a speaking action: ``p_<action>``."""
    return f"p_{action}"


def average_speaking_rate(action: str) -> str:
    """The average strategy's probability of a speaking action: ``avg_p_<action>``."""
    return f"avg_p_{action}"


def state_key(seat: str, state: str, quantity: str) -> str:
    """``controller/<seat>/<state>/<quantity>`` for one controller state (``state`` as its label, ``+1/last``)."""
    return f"controller/{seat}/{state}/{quantity}"


class StateKey(NamedTuple):
    """A parsed :func:`state_key`."""

    seat: str
    state: str
    quantity: str


def parse_state_key(key: str) -> StateKey | None:
    """The parts of a :func:`state_key`, or None for any other key.

    A state label may itself hold ``/`` (``+1/last``), so the seat is the second part and the quantity the last.
    """
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "controller":
        return None
    return StateKey(parts[1], "/".join(parts[2:-1]), parts[-1])


def speaking_action(quantity: str) -> str | None:
    """The action of an ``avg_p_<action>`` quantity, else None."""
    prefix = average_speaking_rate("")
    return quantity[len(prefix):] if quantity.startswith(prefix) else None


def eval_key(stage: str, dataset: str, metric: str) -> str:
    """``<stage>/<dataset>/<metric>`` (``dataset`` may carry ``@<protocol>``)."""
    return f"{stage}/{dataset}/{metric}"


def eval_state_key(seat: str, action: str, state: str) -> str:
    """The evaluation speaking-rate key of one controller state, below ``<stage>/<dataset>/``."""
    return f"{seat}/{speaking_rate(action)}/{state}"
