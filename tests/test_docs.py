"""The documentation site under docs/ against the tree it describes.

- The layout page names every module of the package by its path.
- Every test named in the fault catalogue exists, in the file the row names (tests/test_trust.py
  unless named).
"""

from __future__ import annotations

import re

from asyncbench.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def test_the_layout_page_names_every_module() -> None:
    layout = (DOCS / "layout.md").read_text(encoding="utf-8")
    modules = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "asyncbench").rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"docs/layout.md does not name: {missing}"


def test_every_test_the_fault_catalogue_names_exists() -> None:
    rows = [line for line in (DOCS / "faults.md").read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert len(rows) > 40
    named = 0
    for row in rows:
        for ref in re.findall(r"`([^`]*test_[^`]*)`", row.rsplit("|", 2)[-2]):
            if ref.endswith(".py"):  # a whole test file
                assert (REPO_ROOT / ref).is_file(), f"no {ref}"
            else:
                path, _, name = ref.rpartition("::")
                path = path or "tests/test_trust.py"
                source = (REPO_ROOT / path).read_text(encoding="utf-8")
                assert re.search(rf"^\s*(async )?def {re.escape(name)}\(", source, re.M), f"{path} has no {name}"
            named += 1
    assert named > 40
