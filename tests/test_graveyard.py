"""The module paths before the subpackages still import for one release, with a warning naming the new path."""

import importlib
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import SaveConfigCallback

from tests.helpers.paths import TINY
from tracer_pl import _graveyard
from tracer_pl.cli import build_cli


@pytest.mark.parametrize(("old", "new"), sorted(_graveyard.MOVED.items()))
def test_every_old_module_path_forwards_to_its_new_module(old, new):
    stand_in = importlib.import_module(f"tracer_pl.{old}")
    target = importlib.import_module(f"tracer_pl.{new}")
    name = next(n for n in sorted(vars(target)) if not n.startswith("_") and getattr(target, n) is not None)
    with pytest.warns(FutureWarning, match=rf"tracer_pl\.{old}\.{name} moved to tracer_pl\.{new}\.{name}"):
        assert getattr(stand_in, name) is getattr(target, name)


@pytest.mark.parametrize(("old", "name", "new"), [
    ("engine", "HFEngine", "tracer_pl.engines.hf.HFEngine"),
    ("backbone", "Backbone", "tracer_pl.engines.hf.policy.HFPolicy"),
    ("module", "TracerModule", "tracer_pl.training.module.TracerModule"),
    ("callbacks", "BatchCheckpoint", "tracer_pl.training.callbacks.BatchCheckpoint"),
])
def test_renamed_and_moved_names_resolve(old, name, new):
    module, attribute = new.rsplit(".", 1)
    with pytest.warns(FutureWarning, match=f"moved to {new}"):
        found = getattr(importlib.import_module(f"tracer_pl.{old}"), name)
    assert found is getattr(importlib.import_module(module), attribute)


def test_an_unknown_name_of_an_old_path_is_an_attribute_error():
    with warnings.catch_warnings(), pytest.raises(AttributeError):
        warnings.simplefilter("ignore", FutureWarning)
        importlib.import_module("tracer_pl.roles").NoSuchRole  # noqa: B018


def test_a_saved_config_naming_old_class_paths_still_builds(tmp_path):
    # what a config.yaml saved by tracer_pl 0.1 names: its callbacks, roles and engine by their old paths
    config = yaml.safe_load(Path(TINY).read_text())
    for callback in config["trainer"]["callbacks"]:
        callback["class_path"] = callback["class_path"].replace("tracer_pl.training.callbacks", "tracer_pl.callbacks")
    config["model"]["proposer"] = {"class_path": "tracer_pl.roles.Proposer"}
    config["model"]["reviewer"] = {"class_path": "tracer_pl.roles.Reviewer"}
    config["model"]["engine"] = {"class_path": "tracer_pl.engine.HFEngine"}
    config["trainer"]["default_root_dir"] = str(tmp_path)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config))
    with pytest.warns(FutureWarning, match="moved to"):
        cli = build_cli(["-c", str(saved)], run=False)
    assert type(cli.model.engine).__module__ == "tracer_pl.engines.hf.engine"
    assert type(cli.model.proposer).__module__ == "tracer_pl.core.roles"
    named = [c for c in cli.trainer.callbacks if "tracer_pl" in type(c).__module__
             and not isinstance(c, SaveConfigCallback)]  # the CLI's own config saver is not in the YAML
    assert {type(c).__module__ for c in named} == {"tracer_pl.training.callbacks"}
