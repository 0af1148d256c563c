"""What grew in a process between two tracemalloc snapshots written by ``kernel.memprofile``.

    .venv/bin/python bench/memdiff.py /tmp/snaps                 # each pid: second snapshot vs last
    .venv/bin/python bench/memdiff.py /tmp/snaps --early 3 --top 20 --group lineno

For every pid with snapshots in the directory it prints the resident and traced memory of
each snapshot, the top allocation sites by growth (``Snapshot.compare_to``, grouped by
``traceback`` or ``lineno``), and the object types whose live count grew most.
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections import defaultdict
from pathlib import Path

#: Allocations of the tracer itself and of the import machinery are noise here.
IGNORE = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
          tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"), tracemalloc.Filter(False, "<unknown>")]


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--early", type=int, default=1, help="index of the early snapshot (default 1)")
    parser.add_argument("--late", type=int, default=-1, help="index of the late snapshot (default the last)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--group", default="traceback", choices=("traceback", "lineno", "filename"))
    parser.add_argument("--frames", type=int, default=8, help="frames shown per traceback")
    args = parser.parse_args(argv)
    by_pid: dict[str, list[Path]] = defaultdict(list)
    for info_path in sorted(args.directory.glob("*.json")):  # the .json is written last
        by_pid[info_path.stem.split("-")[0]].append(info_path)
    for pid, paths in sorted(by_pid.items()):
        infos = [json.loads(p.read_text()) for p in paths]
        print(f"=== pid {pid}: {len(paths)} snapshots; RSS MB "
              + " ".join(f"{i['rss_kb'] / 1024:.0f}" for i in infos)
              + "; traced MB " + " ".join(f"{i['traced_kb'] / 1024:.1f}" for i in infos)
              + "; MongoDB sink backlog " + " ".join(str(i.get("mongo_buffered", "?")) for i in infos))
        if len(paths) < 2:
            continue
        early_i = min(args.early, len(paths) - 2)
        ia, ib = infos[early_i], infos[args.late]
        print(f"--- {paths[early_i].stem} -> {paths[args.late].stem}: {ib['at'] - ia['at']:.0f} s, RSS "
              f"{(ib['rss_kb'] - ia['rss_kb']) / 1024:+.1f} MB, traced {(ib['traced_kb'] - ia['traced_kb']) / 1024:+.1f} MB")
        early, late = paths[early_i].with_suffix(".snap"), paths[args.late].with_suffix(".snap")
        stats = []
        if early.exists() and late.exists():
            a = tracemalloc.Snapshot.load(str(early)).filter_traces(IGNORE)
            b = tracemalloc.Snapshot.load(str(late)).filter_traces(IGNORE)
            stats = b.compare_to(a, args.group)[: args.top]
        for stat in stats:
            print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks (now {stat.size / 1024:.1f} KiB)")
            if args.group == "traceback":
                for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
                    print("      " + line.strip())
            else:
                print("      " + str(stat.traceback[0]))
        grew = sorted(((ib["types"].get(t, 0) - ia["types"].get(t, 0), t) for t in set(ia["types"]) | set(ib["types"])),
                      reverse=True)
        print("object counts grown: " + ", ".join(f"{t} {d:+d}" for d, t in grew[:12] if d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
