"""Write the golden outputs that the redesigned pipeline must reproduce exactly.

Run once on the code whose behaviour is the reference (``python tests/golden/make_golden.py``
from the project root, with ``../shared`` beside it); ``tests/test_golden.py`` compares every
later version against the files it writes. The cases themselves live in ``golden_cases.py`` so
that the writer and the test run exactly the same calls.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden_cases import (  # noqa: E402
    ANNOTATE_CASES,
    EVALUATE_CASES,
    PREPARE_CASES,
    golden_environment,
    run_annotate_case,
    run_evaluate_case,
    run_prepare_case,
)


def main() -> None:
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    with golden_environment():
        for name in ANNOTATE_CASES:
            table, obs, uns = run_annotate_case(name)
            table.to_csv(out / f"annotate_{name}.table.csv.gz", float_format="%.17g")
            obs.to_csv(out / f"annotate_{name}.obs.csv.gz", float_format="%.17g")
            (out / f"annotate_{name}.uns.json").write_text(
                json.dumps(uns, indent=1, sort_keys=True, default=str) + "\n")
            print("annotate", name, len(table))
        hashes = {}
        for name in PREPARE_CASES:
            path = run_prepare_case(name, out / "tmp")
            hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            path.unlink()
            print("prepare", name, hashes[name])
        (out / "tmp").rmdir()
        (out / "prepare.sha256.json").write_text(json.dumps(hashes, indent=1) + "\n")
        for name in EVALUATE_CASES:
            frames = run_evaluate_case(name)
            for part, df in frames.items():
                df.to_csv(out / f"evaluate_{name}.{part}.csv", float_format="%.17g")
            print("evaluate", name)


if __name__ == "__main__":
    main()
