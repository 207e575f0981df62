#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle.

Each crate under crates/ is read as a graph: a node per top-level module (a file in src/, or
a folder with its mod.rs), an edge A -> B for each `crate::B` that A's non-test code names.
Test code may reach anywhere, so `#[cfg(test)]` items, tests.rs and testing.rs are left out.
A strongly connected component of more than one module is a cycle, and is printed with the
edges that make it, so the fix (moving the shared piece down) is plain.

    python3 scripts/check_module_graph.py [crates/...]
"""
import re
import sys
from pathlib import Path

TEST_FILES = {"tests.rs", "testing.rs"}
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}`: each name inside the braces is a module too.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)
# In src/a.rs and src/a/mod.rs, `super::b` is `crate::b`.
SUPER_PATH = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")
SUPER_GROUP = re.compile(r"\bsuper::\{([^}]*)\}", re.S)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def item_end(text, start):
    """The end of the item that starts at `start`: its matching brace, or its `;`."""
    brace, semi = text.find("{", start), text.find(";", start)
    if brace == -1 or (semi != -1 and semi < brace):
        return semi + 1
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def strip_test_items(text):
    while (at := text.find("#[cfg(test)]")) != -1:
        start = at + len("#[cfg(test)]")
        # Other attributes of the same item.
        while (m := re.match(r"\s*#\[[^\]]*\]", text[start:])):
            start += m.end()
        text = text[:at] + text[item_end(text, start):]
    return text


def module_of(src, path):
    rel = path.relative_to(src)
    if len(rel.parts) == 1:
        return rel.stem
    return rel.parts[0]


def crate_graph(crate):
    src = crate / "src"
    modules = {module_of(src, p) for p in src.rglob("*.rs")} - {"lib", "main", "tests", "testing"}
    edges = {m: {} for m in modules}
    for path in sorted(src.rglob("*.rs")):
        if path.name in TEST_FILES:
            continue
        owner = module_of(src, path)
        if owner not in edges:
            continue
        code = strip_test_items(strip_comments(path.read_text()))
        paths, groups = [CRATE_PATH], [CRATE_GROUP]
        rel = path.relative_to(src)
        if len(rel.parts) == 1 or rel.name == "mod.rs":
            paths.append(SUPER_PATH)
            groups.append(SUPER_GROUP)
        names = [n for pattern in paths for n in pattern.findall(code)]
        for group in (g for pattern in groups for g in pattern.findall(code)):
            names += [part.strip().split("::")[0] for part in group.split(",")]
        for name in names:
            if name in modules and name != owner:
                edges[owner].setdefault(name, str(path.relative_to(crate)))
    return edges


def cycles(edges):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv):
    root = Path(__file__).resolve().parent.parent
    crates = [Path(a) for a in argv] or sorted((root / "crates").iterdir())
    failed = False
    for crate in crates:
        if not (crate / "src").is_dir():
            continue
        edges = crate_graph(crate)
        count = sum(len(e) for e in edges.values())
        found = cycles(edges)
        if not found:
            print(f"{crate.name}: {len(edges)} modules, {count} edges, no cycles")
        for component in found:
            failed = True
            print(f"{crate.name}: modules in a cycle: {', '.join(component)}")
            for a in component:
                for b, where in sorted(edges[a].items()):
                    if b in component:
                        print(f"  {a} -> {b} ({where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
