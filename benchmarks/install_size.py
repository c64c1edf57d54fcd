"""Installed size of resnext-compile with some extras, from the environment's package records.

    python benchmarks/install_size.py cpu          # the deploy install
    python benchmarks/install_size.py cpu train    # + training (torch as installed here)
    python benchmarks/install_size.py dev          # everything

Walks the dependency closure of `resnext-compile[EXTRAS]` through the installed distributions'
metadata and adds up the files each one's RECORD lists (what `du` of a venv holding exactly
those would count, without pip and setuptools). Needs the closure installed in this
environment (the `dev` install has it all). tests/test_deploy_install.py measures the deploy
install with `du` in a fresh venv as a cross-check.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from packaging.requirements import Requirement


def closure(root: str, extras: set[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution `root[extras]` needs, keyed by normalised name."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(root, frozenset(extras))]
    while pending:
        name, wanted = pending.pop()
        key = name.lower().replace("_", "-")
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        try:
            dist = found.get(key) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency that is not installed
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return found


def installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        if file.size is not None:
            total += file.size
        else:
            path = file.locate()
            total += path.stat().st_size if path.is_file() else 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", default=["cpu"])
    parser.add_argument("--top", type=int, default=8, help="largest distributions to list")
    args = parser.parse_args()
    sizes = {}
    for key, dist in closure("resnext-compile", set(args.extras)).items():
        sizes[key] = installed_bytes(dist)
    total = sum(sizes.values())
    print(
        f"resnext-compile[{','.join(args.extras)}]: {len(sizes)} distributions, "
        f"{total / 1e6:,.0f} MB installed"
    )
    for key, size in sorted(sizes.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {key:28s} {size / 1e6:8,.0f} MB")


if __name__ == "__main__":
    main()
