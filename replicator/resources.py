"""Files that ship beside the package: the alembic environment and the demo app.

In a wheel they are installed inside the package (``replicator/_migrations``,
``replicator/_examples``, see ``pyproject.toml``); in a source checkout or an
editable install they are the repository's ``migrations/`` and ``examples/``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The directory of a shipped resource: ``"migrations"`` or ``"examples"``."""
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the replicator's {name}/ directory is missing from the installation")


def load_example(module: str) -> ModuleType:
    """Import a module of the reference app by file (``examples/<module>.py``)."""
    qualified = f"replicator_examples.{module}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(
        qualified, resource_dir("examples") / f"{module}.py"
    )
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = loaded
    spec.loader.exec_module(loaded)
    return loaded
