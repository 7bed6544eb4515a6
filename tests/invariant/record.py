"""Record the pinned fingerprints that ``test_reproducibility.py`` checks: ``python -m tests.invariant.record``.

Run from the repository root, for a deliberate change of behaviour only (say why in the commit). With no
arguments every run is recorded; name runs to record only those (possible only with the package versions the
file was recorded with, so that one file holds fingerprints of one set of versions). The test never writes.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the test suite runs (tests/conftest.py)
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.invariant.fingerprints import PIN, RUNS, fingerprint, installed_versions, read_pins  # noqa: E402


def main(argv=None, pin=PIN) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.invariant.record", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help=f"runs to record (default: all of {sorted(RUNS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; the runs are {sorted(RUNS)}")
    versions, pins = installed_versions(), read_pins(pin)
    same_versions = pins["versions"] == versions
    if args.runs and not same_versions:
        parser.error(f"the file was recorded with {pins['versions']} and this environment has {versions}: "
                     "record every run (no RUN arguments)")
    runs = args.runs or list(RUNS)
    recorded = {}
    start = os.getcwd()
    for run in runs:
        with tempfile.TemporaryDirectory(prefix=f"pin_{run}_") as tmp:
            os.chdir(tmp)  # configs that write relative paths write here
            try:
                recorded[run] = fingerprint(Path(tmp) / "run", RUNS[run])
            finally:
                os.chdir(start)
        before = pins["runs"].get(run)
        print(f"{run}: {recorded[run]} ({'unchanged' if before == recorded[run] else f'was {before}'})", flush=True)
    kept = pins["runs"] if same_versions else {}
    pin.write_text(json.dumps({"versions": versions, "runs": {**kept, **recorded}}, indent=2) + "\n")
    print(f"wrote {pin}")


if __name__ == "__main__":
    main()
