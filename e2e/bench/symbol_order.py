"""Prints a linker symbol ordering file from two callgrind profiles of the sidecar.

Usage: symbol_order.py BINARY PROFILE_A PROFILE_B

Every function the profiles executed: first those only A ran, then those both ran, then those only
B ran, so that what either run needs lies together; within each group, most instructions first.
Only names BINARY's symbol table has are kept (callgrind also names code by address).
Written for e2e/bench/sidecar-symbol-order.sh.
"""

import collections
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


def main():
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
