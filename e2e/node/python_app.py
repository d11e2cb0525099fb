#!/usr/bin/env python3
"""Prints image.py's arguments (one a line, for `image.py @FILE`) for an app image holding the
running interpreter, its standard library and the given distributions with what they require:
an unchanged Bedrock app (boto3, the Anthropic SDK) as teams ship one, for the test node. Run it
with the interpreter whose packages the image should carry (the test venv's):

  python python_app.py boto3 > args && image.py --name ... --out app.tar @args

The interpreter and standard library keep their paths (Python finds its prefix from where it
runs); the packages go to /opt/app/site-packages, on the image's PYTHONPATH. botocore keeps only
the service models the apps here call (the hundreds of others are most of its size, and nobody
loads them)."""

import importlib.metadata
import os
import re
import sys
import sysconfig

SITE = "/opt/app/site-packages"
BOTOCORE_SERVICES = {"bedrock-runtime", "sts"}


def required(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The distributions named and, transitively, those they require (extras and markers that do
    not hold here left out)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        for req in dist.requires or []:
            requirement, _, marker = req.partition(";")
            if marker and not marker_holds(marker):
                continue
            todo.append(requirement)
    return list(seen.values())


def marker_holds(marker: str) -> bool:
    # `packaging` may not be installed; extras are never asked for, the rest is evaluated.
    if "extra" in marker:
        return False
    from packaging.markers import Marker
    return Marker(marker).evaluate()


def wanted(relative: str) -> bool:
    parts = relative.split("/")
    if "__pycache__" in parts:
        return False
    if parts[:2] == ["botocore", "data"] and len(parts) > 3:
        return parts[2] in BOTOCORE_SERVICES
    return True


def main():
    exe = os.path.realpath(sys.executable)
    stdlib = sysconfig.get_paths("posix_prefix", vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"]
    args = [f"--file={exe}:{exe}", f"--libs-of={exe}", f"--symlink=/usr/bin/python3:{exe}",
            f"--tree={stdlib}:{stdlib}", f"--env=PYTHONPATH={SITE}", "--env=PYTHONDONTWRITEBYTECODE=1"]
    args += [f"--skip={pattern}" for pattern in
             ("__pycache__", "site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "config-*")]
    dynload = os.path.join(stdlib, "lib-dynload")
    # Tk's module would bring X11 and Tk to an image without a display.
    args += [f"--libs-of={os.path.join(dynload, name)}" for name in sorted(os.listdir(dynload))
             if name.endswith(".so") and not name.startswith("_tkinter")]
    for dist in required(sys.argv[1:]):
        for file in dist.files or []:
            relative = str(file)
            if relative.startswith("..") or not wanted(relative):
                continue
            args.append(f"--file={dist.locate_file(file)}:{SITE}/{relative}")
    print("\n".join(args))


if __name__ == "__main__":
    main()
