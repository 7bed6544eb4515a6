"""Two-process (gloo) TRACER training; each rank dumps its final state for test_ddp.py.

Run as ``python tests/training/ddp_worker.py OUT_DIR [tiny|fake]`` from any directory; Lightning starts rank 1
by running the same command again. ``tiny`` trains the tiny model; ``fake`` the fake engine with a third seat (a
verifier), in seconds.
"""

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.helpers

from tests.helpers.roles_for_tests import ByteSumProposer  # noqa: E402
from tracer_pl.core.controllers import Controller  # noqa: E402
from tracer_pl.core.dialogue import DialogueConfig  # noqa: E402
from tracer_pl.core.gspo import GSPOConfig  # noqa: E402
from tracer_pl.data.datamodule import ReasoningDataModule  # noqa: E402
from tracer_pl.engines.fake import FakeEngine  # noqa: E402
from tracer_pl.examples import Verifier  # noqa: E402
from tracer_pl.training.module import BackboneConfig, TracerModule  # noqa: E402

LOCAL_UPDATES = []
_update = Controller.update


def counting_update(self, state, values, strategy):
    if self.learns:
        LOCAL_UPDATES.append(self.name)
    _update(self, state, values, strategy)


Controller.update = counting_update


class Dump(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [p.question for p in batch]

    def on_train_end(self, trainer, pl_module):
        torch.save({
            "controllers": {c.name: c.matcher.state_dict() for c in pl_module.controllers},
            "adapters": {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad},
            "local_updates": len(LOCAL_UPDATES),
            "seen": self.seen,
            "steps": {k: v for k, v in pl_module.last_step_statistics.items() if k.endswith("/steps")},
        }, self.out / f"rank{trainer.global_rank}.pt")


def tracer(model: str) -> TracerModule:
    if model == "fake":  # one-token answers and verdicts: most candidate groups have signal
        return TracerModule(backbone=BackboneConfig(max_new_tokens=1), engine=FakeEngine(), extra_roles=[Verifier()],
                            dialogue=DialogueConfig(rounds=5, schedule=[
                                "proposer", "reviewer", "proposer", "verifier", "proposer"]),
                            gspo=GSPOConfig(group_size=4, lr=0.5))
    return TracerModule(backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=8), proposer=ByteSumProposer(),
                        dialogue=DialogueConfig(rounds=5), gspo=GSPOConfig(group_size=4, lr=1e-2))


def main(out: Path, model: str) -> None:
    L.seed_everything(0)
    module = tracer(model)
    data = ReasoningDataModule(train="reasoning_gym:basic_arithmetic?size=32&max_terms=2&max_digits=2",
                               batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="tracer_ddp", max_epochs=1, limit_train_batches=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Dump(out)], default_root_dir=str(out))
    trainer.fit(module, data)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "tiny")
