#!/usr/bin/env python3
"""Live heap per link in a profile of the idle bench (`--features dhat-heap`).

Usage: [DEPTH=3] dhat_sites.py target/dhat/idle-TRANSPORT.json LINKS [TOP]

Sums the bytes live at the profile's end ("eb") per side (the thread that allocated:
`gateway_thread` or `agents_thread` in the backtrace) and per site, and divides by
LINKS. A site is the innermost DEPTH frames above the allocator and collection code,
innermost first.
"""

import json
import os
import re
import sys
from collections import defaultdict

# Frames skipped to find a site: dhat's own, and the allocator and collection code of
# the standard library and of hashbrown. dhat keeps only a path's last three components
# (`src/vec/mod.rs`), and line-tables-only debug information names functions without
# their crate, so frames are told apart by function name and path.
NOISE_FUNCTIONS = {"trace", "trace_unsynchronized", "new_backtrace_inner"}
NOISE_PATHS = re.compile(
    r"^(dhat-[^/]*/|(alloc|core|std)/src/|benches/idle/heap\.rs"
    r"|src/(raw_vec|vec|alloc|boxed|sync|string|rc|slice|collections|ptr|ops|hash|iter|str)\b"
    r"|src/raw/mod\.rs|src/map\.rs|src/lib\.rs$)"
)
DEPTH = int(os.environ.get("DEPTH", "3"))


def parse(frame):
    """(function, path:line) of a dhat frame string."""
    text = re.sub(r"^0x[0-9a-f]+: ", "", frame)
    m = re.match(r"(.*?)(?: \((.*)\))?$", text)
    function = re.sub(r"<.*>$", "", m.group(1))  # generic arguments
    location = re.sub(r":\d+$", "", m.group(2) or "")  # the column
    return function, location


def noise(frame):
    function, location = frame
    path = location.split(":")[0]
    return (function in NOISE_FUNCTIONS or function.startswith("__rust_")
            or bool(NOISE_PATHS.match(path)))


def main():
    path, links = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    profile = json.load(open(path))
    frames = [parse(f) for f in profile["ftbl"]]
    sides = defaultdict(int)
    sites = defaultdict(lambda: [0, 0])
    total = [0, 0]
    for pp in profile["pps"]:
        if not pp["eb"]:
            continue
        stack = [frames[i] for i in pp["fs"]]
        names = " ".join(f[0] for f in stack)
        side = ("gateway" if "gateway_thread" in names
                else "agent" if "agents_thread" in names else "other")
        site = [f for f in stack if not noise(f)][:DEPTH]
        key = (side, " < ".join(f"{f} ({loc})" for f, loc in site))
        sides[side] += pp["eb"]
        sites[key][0] += pp["eb"]
        sites[key][1] += pp["ebk"]
        total[0] += pp["eb"]
        total[1] += pp["ebk"]
    per = lambda b: b / links
    print(f"{path}: {per(total[0]):.0f} bytes, {per(total[1]):.1f} blocks live per link")
    for side, b in sorted(sides.items(), key=lambda kv: -kv[1]):
        print(f"  {side}: {per(b):.0f} bytes per link")
    ranked = sorted(sites.items(), key=lambda kv: -kv[1][0])
    for side in ("gateway", "agent"):
        print(f"Top {top} sites of the {side} (bytes, blocks per link; innermost first):")
        for (_, site), (b, n) in [kv for kv in ranked if kv[0][0] == side][:top]:
            print(f"  {per(b):9.0f} {per(n):6.1f}  {site}")

if __name__ == "__main__":
    main()
