"""The Lightning layer.

:class:`~tracer_pl.training.module.TracerModule` and its collaborators (the GSPO update, the evaluator), callbacks,
checkpoints, data parallelism and the logged metrics.
"""
