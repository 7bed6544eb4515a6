"""What a run directory owns, and how a run writes its files.

A run directory is a ``--trainer.default_root_dir``. Three rules keep one run from destroying another:

1. **A run owns its checkpoints.** A ``fit`` writes checkpoints into a directory only when the directory holds
   none, or when the fit resumes from a checkpoint in that same directory (it continues the run that wrote
   them). Any other fit is refused before it trains, naming the directory, ``--ckpt_path last`` (to resume) and
   ``--trainer.default_root_dir`` (to start elsewhere): :func:`check_owner`.
2. **A debug run writes no checkpoint.** ``--trainer.fast_dev_run`` checks that a run works; its one batch is not a
   run, so :class:`~tracer_pl.training.callbacks.BatchCheckpoint` neither saves nor takes the directory.
3. **A run's paths follow its root.** The ``config.yaml`` a run saves names every path of the trainer's that lies
   under its root directory relative to it (``${trainer.default_root_dir}/checkpoints``), so running that file
   again with another ``--trainer.default_root_dir`` writes the new run there: :func:`root_relative`.

Every file a run writes after the fact (records, metrics, the saved config) is written whole: to a temporary file
beside it, then renamed over it (:func:`write_text`), so a full disk or a kill leaves the previous file or none,
never a cut-off one. A directory that cannot be written is refused before anything runs (:func:`check_writable`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracer_pl.errors import CheckpointError, ConfigError, DataError, TracerError

ROOT_KEY = "${trainer.default_root_dir}"


def _shown(path: str | Path) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(path))


# ---------------------------------------------------------------------- rule 1: a run owns its checkpoints
def checkpoints_in(directory: Path) -> list[Path]:
    """The checkpoint files (``*.ckpt``, not the hidden temporaries of a save) in ``directory``, sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.ckpt") if not p.name.startswith(".") and p.is_file())


def check_owner(directory: str | Path, ckpt_path: str | Path | None) -> None:
    """Refuse a fit whose checkpoints would replace those of another run in ``directory``.

    Allowed: ``directory`` holds no checkpoint, or the fit resumes from one in it (``ckpt_path`` is a file in
    ``directory``, by any name of it: a link or a relative path counts as the file it leads to).

    Raises:
        CheckpointError: naming the directory and its checkpoints, and what to do instead.
    """
    directory = Path(directory)
    found = checkpoints_in(directory)
    if not found:
        return
    if ckpt_path is not None and Path(ckpt_path).resolve().parent == directory.resolve():
        return
    names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    resumed = f" (this fit resumes from {_shown(ckpt_path)}, another run's)" if ckpt_path is not None else ""
    raise CheckpointError(
        f"{_shown(directory)} holds the checkpoints of another run ({names}), which this fit would replace"
        f"{resumed}; pass --ckpt_path last to resume that run, or choose another --trainer.default_root_dir"
    )


# ---------------------------------------------------------------------- rule 3: paths follow the root
def root_relative(config: Any, root: str | Path) -> Any:
    """``config`` (a dumped run config) with every path under ``trainer`` that lies in ``root`` written relative to it.

    ``runs/tiny/checkpoints`` becomes ``${trainer.default_root_dir}/checkpoints`` and ``runs/tiny`` itself
    ``${trainer.default_root_dir}``; ``trainer.default_root_dir`` and everything outside ``trainer`` (data paths,
    ``ckpt_path``) stay as they are.
    """
    root_text = str(root).rstrip("/\\")
    if not isinstance(config, Mapping) or not root_text or not isinstance(config.get("trainer"), Mapping):
        return config

    def relative(value: Any) -> Any:
        if isinstance(value, str):
            if value.rstrip("/\\") == root_text:
                return ROOT_KEY
            for separator in {"/", os.sep}:
                if value.startswith(root_text + separator):
                    return ROOT_KEY + "/" + value[len(root_text) + 1:]
            return value
        if isinstance(value, Mapping):
            return {key: relative(item) for key, item in value.items()}
        if isinstance(value, list):
            return [relative(item) for item in value]
        return value

    trainer = {key: value if key == "default_root_dir" else relative(value) for key, value in config["trainer"].items()}
    return {**config, "trainer": trainer}


# ---------------------------------------------------------------------- writing
def check_writable(directory: str | Path, what: str = "the run's files",
                   error_type: type[TracerError] = ConfigError) -> None:
    """Create ``directory`` if needed and prove it writable, or refuse it in one line naming it.

    Raises:
        ConfigError: (or ``error_type``) the directory cannot be created or written (a read-only file system, no
            permission, a file in its place, a full disk).
    """
    directory = Path(directory)
    probe = directory / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise error_type(f"{_shown(directory)}: cannot write {what} there ({error.strerror or error}); make it "
                          "writable or choose another --trainer.default_root_dir") from None


def write_text(path: str | Path, text: str, what: str = "the file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole: a temporary file beside it, flushed, then renamed over it.

    Whatever stands at ``path`` (a file, a link, a named pipe) is replaced, never written through; when the write
    fails (a full disk) the temporary file is removed and ``path`` is left as it was.

    Raises:
        DataError: naming the file and the reason, on one line.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    data = memoryview(text.encode("utf-8"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        raise DataError(f"{_shown(path)}: cannot write {what} ({error.strerror or error}); free space or choose "
                        "another --trainer.default_root_dir; nothing was left half-written") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
