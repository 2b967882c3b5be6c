"""Record the golden fixture: python tests/golden/record.py

Runs tests/golden_run.py's fixed-seed run on the local engine (and on Ray, which must give the
same values), then writes tests/golden/golden.json (this machine's fingerprint and the sha256 of
every output of both engines) and the local engine's tables as parquet. Re-record after a change
that is meant to change the detector's outputs, and say so in the commit message.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import golden_run as g  # noqa: E402


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in g.ENGINES:
            outputs = g.run(Path(tmp) / engine, engine)
            hashes[engine] = g.digests(outputs)
            if engine == "local":
                for name, table in g.value_tables(outputs).items():
                    table.to_parquet(g.FIXTURE / f"{name}.parquet", index=False)
    meta = {"fingerprint": g.fingerprint(), "sha256": hashes}
    (g.FIXTURE / "golden.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(json.dumps(meta, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
