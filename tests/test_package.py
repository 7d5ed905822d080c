"""The distribution: pyproject.toml's install requirements are ranges that admit the pinned lock."""
import pathlib
import re

import tomli  # pytest's own TOML reader on Python 3.10
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _locked() -> dict:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", (ROOT / "requirements.lock").read_text(), flags=re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_every_install_requirement_is_a_range_the_lock_satisfies():
    project = tomli.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"pyproject.toml: {requirement.name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock pins {name}=={locked[name]}, outside pyproject.toml's {requirement.specifier}"
        assert not any(spec.operator == "==" for spec in requirement.specifier), \
            f"pyproject.toml pins {line!r}: install requirements are ranges, the lock pins"
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
