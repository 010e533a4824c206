"""Rewrite the capability section of ``docs/backends.md`` from the tables in
``otcore/autodiff/capabilities.py`` (``tests/test_capabilities.py`` checks it is in sync).

Run from the repository root: ``python docs/_ext/capabilities_page.py``.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from otcore.autodiff import capabilities  # noqa: E402

if __name__ == "__main__":
    page = ROOT / "docs" / "backends.md"
    page.write_text(capabilities.render(page.read_text()))
    print(f"wrote the capability tables into {page}")
