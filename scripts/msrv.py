#!/usr/bin/env python3
"""Checks the crate's `rust-version` against the locked dependency tree.

Reads `cargo metadata --locked --all-features` and walks what a user of the crate compiles (its
normal dependencies, with every feature, and theirs, build scripts' dependencies included, on
every platform). Fails when one of them declares a `rust-version` above the crate's own: a
`cargo update` raised the minimum Rust version unnoticed. Says what the development
dependencies (tests, examples, benches) need too, without failing on them.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def shown(v):
    return ".".join(str(p) for p in (v if v[2] else v[:2]))


def closure(nodes, root, with_dev):
    """Ids of the packages `root` needs: normal and build dependencies, and, from the root only,
    development ones when `with_dev`."""
    wanted = {None, "build"} | ({"dev"} if with_dev else set())
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for dep in nodes[node]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            allowed = wanted if node == root else {None, "build"}
            if kinds & allowed:
                stack.append(dep["pkg"])
    seen.discard(root)
    return seen


def main():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    meta = json.loads(out)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    ours = packages[root].get("rust_version")
    if not ours:
        print("msrv: Cargo.toml sets no rust-version", file=sys.stderr)
        return 1
    ours = version(ours)

    def highest(ids):
        found = [
            (version(packages[i]["rust_version"]), packages[i]["name"], packages[i]["version"])
            for i in ids
            if packages[i].get("rust_version")
        ]
        top = max(found)[0] if found else (0, 0, 0)
        return top, sorted(f"{n} {v}" for r, n, v in found if r == top)

    need, who = highest(closure(nodes, root, with_dev=False))
    dev_need, dev_who = highest(closure(nodes, root, with_dev=True))
    print(
        f"msrv: rust-version {shown(ours)}; the locked tree needs {shown(need)} "
        f"({', '.join(who)}); with dev-dependencies {shown(dev_need)} ({', '.join(dev_who[:3])})"
    )
    if need > ours:
        print(
            f"msrv: a dependency needs Rust {shown(need)}, above the crate's rust-version "
            f"{shown(ours)}: raise rust-version in Cargo.toml (and say so in CHANGELOG.md), "
            "or pin the dependency lower",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
