"""scripts/check_module_graph.py, the check that each crate's modules call downward only: it
passes on this workspace, and fails, naming the edges, on a crate made here with a cycle."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECK = ROOT / "scripts" / "check_module_graph.py"


def check(*crates):
    return subprocess.run(
        [sys.executable, str(CHECK), *map(str, crates)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_crate(root, files):
    for name, text in files.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_workspace_has_no_cycles():
    got = check()
    assert got.returncode == 0, got.stdout + got.stderr
    for crate in ("audiotext-core", "audiotext-assemble", "audiotext-train", "sqlite-audiotext"):
        assert f"{crate}: " in got.stdout and "no cycles" in got.stdout


def test_a_cycle_is_named_with_its_edges(tmp_path):
    crate = write_crate(
        tmp_path / "circular",
        {
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "a.rs": "use crate::b::Thing;\n",
            # A folder module reaching up through `super::`.
            "b/mod.rs": "mod inner;\nuse super::{c, a};\n",
            "b/inner.rs": "// crate::c in a comment is no edge\n",
            "c.rs": "pub fn f() {}\n",
        },
    )
    got = check(crate)
    assert got.returncode == 1, got.stdout
    assert "modules in a cycle: a, b" in got.stdout
    assert "a -> b (src/a.rs)" in got.stdout
    assert "b -> a (src/b/mod.rs)" in got.stdout
    assert "-> c" not in got.stdout


def test_test_code_and_comments_make_no_edges(tmp_path):
    crate = write_crate(
        tmp_path / "layered",
        {
            "lib.rs": "pub mod low;\npub mod high;\n#[cfg(test)]\nmod tests;\n",
            "high.rs": "use crate::low::f;\n",
            "low.rs": (
                "/* crate::high */\n"
                "pub fn f() {}\n"
                "#[cfg(test)]\n#[allow(unused)]\nmod t {\n    use crate::high;\n    fn g() { { } }\n}\n"
                "#[cfg(test)]\nuse crate::high::x;\n"
            ),
            "tests.rs": "use crate::high;\nuse crate::low;\n",
        },
    )
    got = check(crate)
    assert got.returncode == 0, got.stdout
    assert "layered: 2 modules, 1 edges, no cycles" in got.stdout
