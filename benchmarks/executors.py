"""The local and Ray executors side by side: the same `llmctl filter` run, same machine, same workers.

    .venv/bin/python benchmarks/executors.py [--shards 12] [--workers 2]

Input: copies of the bundled real crawl file (examples/crawl), one shard each. Prints wall time,
documents/s, Ray's overhead per shard ((ray - local) / shards, Ray's start-up included and
also shown apart), and checks that both outputs have the same fingerprint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import ray

    from llmctl.data.filter import FilterConfig, run_filter

    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-exec-"))
    inp = work / "in"
    inp.mkdir()
    for i in range(args.shards):
        shutil.copy(ROOT / "examples" / "crawl" / "crawl-00000.warc.gz", inp / f"crawl-{i:03d}.warc.gz")
    t = time.time()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray_start = time.time() - t
    rows = []
    for executor in ("local", "ray"):
        cfg = FilterConfig(workers=args.workers, executor=executor, ray_address="auto")
        t = time.time()
        m = run_filter([str(inp)], work / executor, cfg, progress=False)
        secs = time.time() - t
        rows.append((executor, secs, m["stats"]["documents_read"], m["fingerprint"]))
    ray.shutdown()
    print(f"{args.shards} shards (copies of examples/crawl/crawl-00000.warc.gz), {args.workers} workers, dedup on")
    print("| executor | seconds | documents/s |")
    print("|---|---|---|")
    for ex, secs, docs, _ in rows:
        print(f"| {ex} | {secs:.2f} | {docs / secs:.1f} |")
    (_, local, *_), (_, on_ray, *_) = rows
    print(f"\nRay start-up (ray.init, local instance): {ray_start:.2f} s")
    print(f"Ray overhead per shard task: {(on_ray - local) / args.shards * 1000:.0f} ms")
    print(f"same output: {rows[0][3] == rows[1][3]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
