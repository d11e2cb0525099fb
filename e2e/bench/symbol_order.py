"""Writes or checks the sidecar's linker symbol ordering file (sidecar/symbol-order.txt).

Usage: symbol_order.py BINARY PROFILE_A PROFILE_B
       symbol_order.py check LINK_MAP ORDER_FILE

The first prints every function the profiles executed: first those only A ran, then those both
ran, then those only B ran, so that what either run needs lies together; within each group, most
instructions first. Only names BINARY's symbol table has are kept (callgrind also names code by
address). Written for e2e/bench/sidecar-symbol-order.sh.

`check` counts how many names of ORDER_FILE the linked binary has (its link map, which
sidecar/build.rs has rust-lld write) and fails when fewer than MIN_RESOLVED of them do: names carry
hashes of their crate's version and build settings, so a dependency or toolchain update leaves the
file naming functions that no longer exist, which the linker skips silently.
"""

import collections
import os
import re
import subprocess
import sys

# `fn=(12) name` defines the id 12 (later lines say `fn=(12)`); `cfn=` names a callee the same way.
NAME = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
# callgrind marks recursion depth ("f'2") and names code it has no symbol for by address.
RECURSION = re.compile(r"'\d+$")


def executed(path, instructions):
    """Adds the instructions each function of the profile at PATH ran (self cost) to INSTRUCTIONS."""
    names, current, call_line_next = {}, None, False
    with open(path, errors="replace") as profile:
        for line in profile:
            match = NAME.match(line)
            if match:
                kind, ident, name = match.groups()
                if name:
                    names[ident] = RECURSION.sub("", name)
                if kind == "fn":
                    current = names.get(ident)
                continue
            if line.startswith("calls="):
                call_line_next = True  # the next cost line is the callee's inclusive cost
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if call_line_next:
                    call_line_next = False
                    continue
                fields = line.split()
                if current and len(fields) >= 2:
                    instructions[current] += int(fields[1])


def symbols(binary):
    """The names of BINARY's functions."""
    listing = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    return {f[2] for f in (line.split() for line in listing.stdout.splitlines()) if len(f) == 3 and f[1] in "tTwW"}


# The share of names that must still resolve: a fresh file resolves all of them, and a change to
# the sidecar's own code renames only a few.
MIN_RESOLVED = 0.8
SECTION = re.compile(r":\(\.text\.(.+)\)$")


def check(link_map, order_file):
    """Exits with an error unless most names of ORDER_FILE are symbols in LINK_MAP."""
    with open(order_file) as f:
        wanted = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not os.path.exists(link_map):
        sys.exit(f"no link map {link_map}: the sidecar was linked without rust-lld or without "
                 f"sidecar/symbol-order.txt (see the warnings of its build)")
    linked = set()
    with open(link_map, errors="replace") as f:
        # lld's map: "VMA LMA Size Align Out In Symbol". A symbol's line ends with its name; a
        # function the linker keeps in a section of its own shows as "object:(.text.NAME)".
        for line in f:
            last = line.split()[-1] if line.strip() else ""
            section = SECTION.search(last)
            linked.add(section.group(1) if section else last)
    resolved = sum(name in linked for name in wanted)
    share = resolved / len(wanted) if wanted else 0.0
    summary = f"{resolved:,} of {len(wanted):,} names of {order_file} resolve ({share:.0%})"
    if share < MIN_RESOLVED:
        sys.exit(
            f"{summary}: the file is stale (a dependency or toolchain update renames functions), so the "
            f"sidecar links mostly in the default order and more of its code stays resident. "
            f"Run `make sidecar-symbol-order` and commit the file."
        )
    print(summary)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, first, second = sys.argv[1:]
    known = symbols(binary)
    a, b = collections.Counter(), collections.Counter()
    executed(first, a)
    executed(second, b)
    both = a + b
    groups = [
        [n for n, _ in a.most_common() if n not in b],
        [n for n, _ in both.most_common() if n in a and n in b],
        [n for n, _ in b.most_common() if n not in a],
    ]
    ordered = [n for group in groups for n in group if n in known]
    if not ordered:
        sys.exit(f"no function of {binary} in the profiles {first} and {second}")
    print("# The functions the sidecar runs: rust-lld lays them out first and together (sidecar/build.rs).")
    print("# Written by `make sidecar-symbol-order`; do not edit.")
    print("\n".join(ordered))


if __name__ == "__main__":
    main()
