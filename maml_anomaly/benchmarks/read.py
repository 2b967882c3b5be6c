"""Reader benchmark: time read_long + build_panel on a synthetic long parquet file.

    python -m maml_anomaly.benchmarks.read --series 100000 --points 100

writes ``series x points`` rows (string ids, hourly timestamps, rows shuffled by row group) to
a temporary folder, then prints the seconds spent reading and building the panel (wall and CPU) and
the peak resident memory of the reading process (the data is generated in a child process).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maml_anomaly.config import ColumnConfig
from maml_anomaly.data.read import build_panel, read_long


def write_synthetic(path: Path, n_series: int, n_points: int, seed: int = 0, order: str = "shuffled") -> int:
    """Write a long parquet of hourly series (about 2% missing rows); returns the row count.

    order: "shuffled" (rows in random order, the worst case), "series" (sorted by id then ds)
    or "time" (sorted by ds, as daily appends produce).
    """
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_series), n_points)  # (N,)
    j = np.tile(np.arange(n_points), n_series)  # (N,) grid index
    keep = rng.random(codes.shape[0]) > 0.02  # drop 2% of the rows: missing timestamps
    keep[j == 0] = True
    codes, j = codes[keep], j[keep]
    t0 = np.datetime64("2024-01-01T00:00:00", "ns")
    ds = t0 + j * np.timedelta64(3600, "s").astype("m8[ns]")
    y = np.sin(2 * np.pi * j / 24) + rng.normal(0, 0.1, j.shape[0])
    if order == "shuffled":
        perm = rng.permutation(codes.shape[0])
    elif order == "time":
        perm = np.argsort(j, kind="stable")
    else:
        perm = np.arange(codes.shape[0])
    # ids as zero-padded strings so that the "series" order is also the sorted id order
    ids = np.char.add("series_", np.char.zfill(np.arange(n_series).astype(str), 7))
    table = pa.table(
        {
            "unique_id": pa.DictionaryArray.from_arrays(codes[perm], ids).cast(pa.string()),
            "ds": pa.array(ds[perm]),
            "y": pa.array(y[perm]),
        }
    )
    pq.write_table(table, path, row_group_size=1_000_000)
    return table.num_rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument(
        "--order", choices=["shuffled", "series", "time"], default="shuffled", help="row order in the file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_only:
        print(write_synthetic(args.write_only, args.series, args.points, order=args.order))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.parquet"
        # Generate in a child process so that the peak RSS below is the reader's alone.
        child = [
            sys.executable,
            "-m",
            "maml_anomaly.benchmarks.read",
            "--series",
            str(args.series),
            "--points",
            str(args.points),
            "--order",
            args.order,
            "--write-only",
            str(path),
        ]
        rows = int(subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip())
        c0 = time.process_time()
        t0 = time.perf_counter()
        frame = read_long(path, ColumnConfig(), "error")
        t1 = time.perf_counter()
        panel, report = build_panel(frame)
        t2 = time.perf_counter()
        cpu = time.process_time() - c0  # robust to other processes on a shared machine
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {
        "benchmark": "read",
        "rows": rows,
        "order": args.order,
        "series": panel.n_series,
        "read_long_s": round(t1 - t0, 3),
        "build_panel_s": round(t2 - t1, 3),
        "seconds": round(t2 - t0, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mb": round(peak_mb, 1),
        "missing": report.missing,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"read {rows:,} rows ({panel.n_series:,} series, {args.order} rows) in {result['seconds']:.2f} s "
            f"(read_long {result['read_long_s']:.2f} s + build_panel {result['build_panel_s']:.2f} s; "
            f"{cpu:.2f} s of CPU); "
            f"peak RSS {peak_mb:,.0f} MB"
        )
    return result


if __name__ == "__main__":
    main()
