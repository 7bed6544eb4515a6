"""Seats: who sits at the dialogue's table, and which seat owns each round.

A :class:`Seat` is a role (its prompt, answer parsing, reward and action values, and by its name its adapter)
with its controller. TRACER has two: the proposer, whose utterance becomes the pending answer, and the reviewer,
whose verdict moves the vote. A third seat -- a second reviewer with its own reward, a verifier that speaks
only in the last round -- is one more role class; :func:`turn_order` places it by the dialogue's schedule.
:func:`agent_bundles` seats the released code's N agents, each with its own proposer and reviewer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tracer_pl.core.controllers import Controller, is_proposal_round
from tracer_pl.core.roles import Role


@dataclass
class Seat:
    """A place at the table: a role (prompt, parsing, reward, action values) with its controller.

    A proposing seat's utterance becomes the pending answer (its controller chooses keep/refresh); a reviewing
    seat's verdict moves the vote (skip/speak); :attr:`Role.proposes` says which. The role's ``name`` selects its
    adapter, and names its controller and metric keys.
    """

    role: Role
    controller: Controller

    @property
    def name(self) -> str:
        return self.role.name

    @property
    def proposes(self) -> bool:
        return self.role.proposes


class _SeatLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def proposes(self) -> bool: ...


S = TypeVar("S", bound=_SeatLike)


def turn_order(seats: Sequence[S], schedule: Sequence[str] | None, rounds: int) -> list[S]:
    """The seat of every round: ``schedule`` by role name, or TRACER's alternation of the first two seats.

    ``seats`` are :class:`Seat` objects, or anything with a ``name`` and ``proposes`` (roles, to check a
    configuration before any controller exists).

    Raises:
        ValueError: The schedule names no seat, starts with a reviewing seat, leaves a seat out, or does not have
            ``rounds`` rounds; or the seats' names are not distinct.
    """
    by_name = {seat.name: seat for seat in seats}
    if len(by_name) != len(seats):
        raise ValueError(f"seats need distinct role names (one adapter each), got {[s.name for s in seats]}")
    if schedule is None:
        if len(seats) != 2:
            raise ValueError(f"{len(seats)} seats need a schedule naming the seat of every round")
        return [seats[0] if is_proposal_round(r) else seats[1] for r in range(1, rounds + 1)]
    unknown = [name for name in schedule if name not in by_name]
    if unknown:
        raise ValueError(f"schedule names {unknown}, which are no seat; the seats are {list(by_name)}")
    if len(schedule) != rounds:
        raise ValueError(f"schedule has {len(schedule)} rounds but rounds is {rounds}")
    if not by_name[schedule[0]].proposes:
        raise ValueError(f"schedule: round 1 must be a proposing seat's (nothing is pending yet), not "
                         f"{schedule[0]!r}")
    idle = [name for name in by_name if name not in schedule]
    if idle:
        raise ValueError(f"schedule gives no round to the seats {idle}")
    return [by_name[name] for name in schedule]


def agent_bundles(proposer: Role, reviewer: Role, num_agents: int, rounds: int) -> tuple[list[Role], list[str]]:
    """The released code's ``num_agents`` agent bundles as seats: the roles that get a round, and the schedule.

    Round ``r`` belongs to agent ``a = (r - 1) mod num_agents``; in an odd round that agent proposes, in an even one
    it reviews. Each (agent, role) pair that gets a round is a seat of its own -- a copy of ``proposer`` or
    ``reviewer`` named ``agent<a>_proposer`` / ``agent<a>_reviewer``, so with its own adapter and controller --
    ordered by its first round. With an even ``num_agents`` even agents only propose and odd agents only review;
    pairs that never get a round have no seat (they would train nothing). ``num_agents = 2`` gives TRACER's two
    seats under their own names, ``proposer`` and ``reviewer``.

    Returns:
        The seats' roles and the seat name of every round.
    """
    if num_agents == 2:
        return [proposer, reviewer], [proposer.name if r % 2 else reviewer.name for r in range(1, rounds + 1)]
    roles: dict[str, Role] = {}
    schedule = []
    for r in range(1, rounds + 1):
        template = proposer if r % 2 else reviewer
        name = f"agent{(r - 1) % num_agents}_{template.name}"
        if name not in roles:
            roles[name] = copy.deepcopy(template)
            roles[name].name = name
        schedule.append(name)
    return list(roles.values()), schedule
