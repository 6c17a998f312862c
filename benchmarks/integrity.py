"""What llmctl's integrity checks cost (issue 20): whole-file input fingerprints next to filtering the
same files, shard SHA-256 verification on read next to what reads the shards (pretrain's token
load, tokenize encode), and the writer lock.

    python benchmarks/integrity.py                       # the crawl in ../shared/data/crawl, 20M tokens
    python benchmarks/integrity.py --tokens 50000000 --repeat 3

Each figure is the best of --repeat runs (the machine is shared: see the load average printed).
The verification cost is what LLMCTL_VERIFY=0 saves.
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep it off the import path
sys.path[:] = [p for p in sys.path if p not in ("", __import__("os").path.dirname(__file__))]

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
CRAWL = SHARED_DATA / "crawl"
TOKENS_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("split", pa.string())])


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def token_dataset(out: Path, n_tokens: int, shards: int = 4) -> Path:
    from llmctl.store.dataset import StageOutput

    class Cfg:
        __dataclass_fields__: dict = {}

    rng = np.random.default_rng(0)
    so = StageOutput(out, "tokens", Cfg(), inputs=[])
    per, names = n_tokens // shards, []
    for k in range(shards):
        lengths = rng.integers(100, 400, per // 250)
        flat = rng.integers(0, 8192, int(lengths.sum()), dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        w = so.shard_writer(f"part-{k:05d}.parquet", TOKENS_SCHEMA)
        w.write_table(
            pa.table(
                {"id": [f"{k}-{i}" for i in range(len(lengths))], "input_ids": ids, "split": ["train"] * len(lengths)},
                schema=TOKENS_SCHEMA,
            )
        )
        so.finish_task(f"part-{k:05d}", {"data": [{"path": f"part-{k:05d}.parquet", **w.close()}]})
        names.append(f"part-{k:05d}")
    so.finalize(names, TOKENS_SCHEMA)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crawl", default=str(CRAWL))
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from llmctl.data.filter import FilterConfig, run_filter
    from llmctl.store.dataset import Dataset, fingerprint_file
    from llmctl.store.lock import writer_lock
    from llmctl.train.pretrain import load_token_split

    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    files = sorted(Path(args.crawl).glob("*.warc.gz"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        fp = best(lambda: [fingerprint_file(f) for f in files], args.repeat)
        flt = best(
            lambda: run_filter(
                [str(f) for f in files], Path(tmp) / f"f{time.time_ns()}", FilterConfig(workers=1), progress=False
            ),
            1,
        )
        print(
            f"fingerprint (SHA-256 of whole files): {mb / fp:8.1f} MB/s  | filter (1 worker, defaults): "
            f"{mb / flt:6.2f} MB/s  -> fingerprints cost {100 * fp / flt:.2f}% of filtering {mb:.1f} MB"
        )

        ds_path = token_dataset(Path(tmp) / "tokens", args.tokens)
        ds = Dataset.open(ds_path)
        shard_mb = sum(s["bytes"] for s in ds.shard_records) / 1e6

        def load(verify: str) -> None:
            os.environ["LLMCTL_VERIFY"] = verify
            load_token_split(ds, "train")

        load("1")  # warm the page cache
        on, off = best(lambda: load("1"), args.repeat), best(lambda: load("0"), args.repeat)
        os.environ["LLMCTL_VERIFY"] = "1"
        hashing = best(lambda: [ds.verify(i) for i in range(len(ds.shards))], args.repeat)
        print(
            f"pretrain token load, {args.tokens / 1e6:.0f}M tokens ({shard_mb:.0f} MB of shards): "
            f"{off:.3f} s with LLMCTL_VERIFY=0, {on:.3f} s verified; the SHA-256 of the shards alone takes "
            f"{hashing:.3f} s ({shard_mb / hashing:.0f} MB/s) = {100 * hashing / off:.0f}% of the load"
        )
        n, out = 200, Path(tmp) / "locked"
        t = time.perf_counter()
        for _ in range(n):
            with writer_lock(out):
                pass
        print(f"writer lock: {1e3 * (time.perf_counter() - t) / n:.2f} ms to take and release (local disk)")
        os.environ.pop("LLMCTL_VERIFY", None)


if __name__ == "__main__":
    main()
