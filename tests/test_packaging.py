"""What `pip install` sees: the Python versions dmedit admits."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_python_3_11_and_newer_may_install_it() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    admitted = SpecifierSet(project["requires-python"])
    assert all(version in admitted for version in ("3.11", "3.12", "3.13")), admitted
    assert "3.10" not in admitted
    assert not any(name.startswith("decord") for name in project["dependencies"]), "video is read with PyAV"
