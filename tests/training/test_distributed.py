"""Deferred controller updates: replaying every process's updates keeps the regret tables identical."""

import torch

from tracer_pl.core.controllers import ProposerController

STATES = [("+0", "not_last"), ("-1", "last"), ("+1", "last")]


def draws(seed, n):
    g = torch.Generator().manual_seed(seed)
    return [(STATES[int(torch.randint(3, (1,), generator=g))], tuple((torch.rand(2, generator=g) * 2 - 1).tolist()))
            for _ in range(n)]


def test_flush_replays_all_ranks_in_order_and_matches_a_sequential_run():
    for plus in (False, True):
        ranks = [ProposerController(plus=plus), ProposerController(plus=plus)]
        reference = ProposerController(plus=plus)
        work = [draws(1, 6), draws(2, 4)]  # two ranks, one round, different numbers of decisions
        for controller, decisions in zip(ranks, work):
            controller.defer()
            for state, values in decisions:
                controller.update(state, values, controller.matcher.strategy(state))
            assert not controller.matcher.states()  # nothing applied before the flush
        buffers = [c._deferred for c in ranks]
        assert [c.flush(lambda local, b=buffers: list(b)) for c in ranks] == [10, 10]
        # what one process gets when it applies rank 0's then rank 1's updates, each against the strategy
        # every rank saw during the round (the tables as they were when the round began, here uniform)
        for decisions in work:
            for state, values in decisions:
                reference.update(state, values, torch.full((2,), 0.5, dtype=torch.float64))
        for state in reference.matcher.states():
            for controller in ranks:
                m = controller.matcher
                assert m.visits(state) == reference.matcher.visits(state)
                assert torch.equal(m.cumulative_regret(state), reference.matcher.cumulative_regret(state))
                assert torch.equal(m.strategy_sum(state), reference.matcher.strategy_sum(state))
                assert m.average_regret(state) == reference.matcher.average_regret(state)


def test_without_defer_updates_apply_at_once_and_flush_is_a_no_op():
    controller = ProposerController()
    controller.update(STATES[0], (1.0, -1.0), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert controller.matcher.visits(STATES[0]) == 1 and controller.flush() == 0


def test_plain_ddp_is_refused_with_the_strategy_to_use():
    from types import SimpleNamespace

    import pytest
    from lightning.pytorch.strategies import DDPStrategy

    from tracer_pl.errors import ConfigError
    from tracer_pl.training.module import TracerModule

    module = TracerModule()
    module._trainer = SimpleNamespace(world_size=2, strategy=DDPStrategy())
    with pytest.raises(ConfigError, match="--trainer.strategy tracer_ddp"):
        module.on_fit_start()


def strategies():
    import torch
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    from tracer_pl.training.distributed import TracerDDPStrategy

    return [
        (SingleDeviceStrategy(torch.device("cpu")), None),  # the default on one device
        (TracerDDPStrategy(), None),
        (DDPStrategy(), "DDPStrategy cannot train TracerModule"),  # on one process too: it fails at the 1st step
        (DDPStrategy(start_method="spawn"), "DDPStrategy cannot train TracerModule"),
    ]


def test_only_the_default_and_tracer_ddp_strategies_are_accepted():
    import pytest

    from tracer_pl.errors import ConfigError
    from tracer_pl.training.module import check_strategy

    for strategy, refused in strategies():
        if refused is None:
            check_strategy(strategy)
            continue
        with pytest.raises(ConfigError, match=f"^--trainer.strategy: {refused} .*use --trainer.strategy tracer_ddp"):
            check_strategy(strategy)
