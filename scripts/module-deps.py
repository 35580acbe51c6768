#!/usr/bin/env python3
"""Reads the `crate::` paths of every top-level module under src/ and fails on an import cycle.

Each `crate::name` (in a `use` line or inline) is an edge from the module holding the file to the
module that defines `name`; names re-exported at the crate root count for their defining module.
Test code (`tests.rs`, `*_tests.rs`, `test_util.rs`, and inline `#[cfg(test)] mod tests`) is left
out: tests may reach anything. Prints the edges with `--edges`.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    """Source without comments, string and char literals, and inline test modules."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + len(hashes) + 2)
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and i + 2 < n and (text[i + 1] == "\\" or text[i + 2] == "'"):
            end = text.find("'", i + 2)
            i = n if end < 0 else end + 1
            out.append("' '")
        else:
            out.append(c)
            i += 1
    text = "".join(out)
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    return text[: m.start()] if m else text


def is_test(path):
    base = os.path.basename(path)
    return base in ("tests.rs", "test_util.rs") or base.endswith("_tests.rs")


def module_of(path):
    rel = os.path.relpath(path, SRC)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def root_reexports(lib):
    """name -> defining module for `pub use module::{a, b}` lines of lib.rs."""
    out = {}
    for m in re.finditer(r"pub use (\w+)::(\{[^}]*\}|\w+)", lib):
        module, names = m.group(1), m.group(2)
        for name in re.findall(r"\w+", names):
            out[name] = module
    return out


def main():
    lib = strip(open(os.path.join(SRC, "lib.rs")).read())
    modules = set(re.findall(r"mod (\w+);", lib))
    reexports = root_reexports(lib)
    edges = {}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            path = os.path.join(dirpath, f)
            if not f.endswith(".rs") or is_test(path) or path.endswith("lib.rs"):
                continue
            src_mod = module_of(path)
            text = strip(open(path).read())
            names = set(re.findall(r"\bcrate::(\w+)", text))
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"\bcrate::\{([^;]*)\}", text):
                names.update(re.findall(r"(?:^|[,{]\s*)(\w+)", group))
            for name in names:
                target = name if name in modules else reexports.get(name)
                if target and target != src_mod:
                    edges.setdefault(src_mod, {}).setdefault(target, set()).add(
                        os.path.relpath(path, os.path.join(SRC, ".."))
                    )
    if "--edges" in sys.argv:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}  ({', '.join(sorted(edges[a][b]))})")
    # Strongly connected components (Tarjan).
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    if sccs:
        for comp in sccs:
            print("import cycle between: " + ", ".join(comp))
            for a in comp:
                for b in sorted(edges.get(a, {})):
                    if b in comp:
                        print(f"  {a} -> {b}  ({', '.join(sorted(edges[a][b]))})")
        sys.exit(1)
    print(f"no import cycle between the {len(modules)} top-level modules of src/")


if __name__ == "__main__":
    main()
