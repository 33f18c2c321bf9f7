"""requirements.lock pins every dependency pyproject.toml declares, within its range."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts += extra
    return [Requirement(text) for text in texts]


def _pinned() -> dict[str, list[tuple[str, str | None]]]:
    """Package name -> [(version, marker text or None)], as the lock pins them."""
    pins: dict[str, list[tuple[str, str | None]]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        marker = str(requirement.marker) if requirement.marker else None
        pins.setdefault(_normal(requirement.name), []).append((spec.version, marker))
    return pins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _pinned()
    environment = default_environment()
    problems = []
    for requirement in _declared():
        found = [
            version
            for version, marker in pins.get(_normal(requirement.name), [])
            if marker is None or Requirement(f"x; {marker}").marker.evaluate(environment)
        ]
        if not found:
            problems.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(found[0], prereleases=True):
            problems.append(f"{requirement.name}=={found[0]} is outside {requirement.specifier}")
    assert not problems, (
        "requirements.lock does not match pyproject.toml: "
        + "; ".join(problems)
        + " (run `bash .ci/lock`)"
    )


def test_this_environment_runs_the_locked_versions():
    """What the README's install gives is what the lock says (not a newer release)."""
    from importlib.metadata import PackageNotFoundError, version

    environment = default_environment()
    drift = []
    for name, versions in _pinned().items():
        wanted = [
            v
            for v, marker in versions
            if marker is None or Requirement(f"x; {marker}").marker.evaluate(environment)
        ]
        if not wanted:
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # an extra this environment did not install (the benchmarks' peer)
        if installed != wanted[0]:
            drift.append(f"{name} {installed} (locked {wanted[0]})")
    assert not drift, (
        "installed versions differ from requirements.lock: "
        + ", ".join(drift)
        + "; install with `pip install -c requirements.lock ...`"
    )
