"""Problems for training and evaluation.

:mod:`~tracer_pl.data.sources` reads files, hub datasets and generated problems; :class:`ReasoningDataModule` serves
them to Lightning.
"""

from tracer_pl.data.datamodule import ReasoningDataModule

__all__ = ["ReasoningDataModule"]


def __getattr__(name: str):  # tracer_pl.data was one module before 0.2: its other names, for one release
    import importlib
    import warnings

    from tracer_pl.data import datamodule

    if name.startswith("__") or not hasattr(datamodule, name):
        raise AttributeError(f"module 'tracer_pl.data' has no attribute {name!r}")
    warnings.warn(f"tracer_pl.data.{name} moved to tracer_pl.data.datamodule.{name}; the old path works until the "
                  "next release", FutureWarning, stacklevel=2)
    return getattr(importlib.import_module("tracer_pl.data.datamodule"), name)
