"""aggregator: merges many feeds into clean, deduplicated topic feeds."""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/aggregator-dev/aggregator"
USER_AGENT = f"aggregator/{__version__} (+{PROJECT_URL})"

#: module → optional modules it imports when they are installed, which we never use through
#: it: sqlite_utils maps numpy's and pandas' types to column types (we store neither; numpy
#: alone is 15 MB and 0.2 s at every start), lxml reads RELAX NG compact schemas with
#: rnc2rng (we validate none; 10 MB, in every parse worker too)
_UNUSED_OPTIONAL = {
    "sqlite_utils.db": ("numpy", "pandas"),
    "lxml.etree": ("rnc2rng",),
}


class _Without:
    """A module's loader that runs it as if `absent` were not installed: each of them not
    yet imported is an ImportError for the module's own imports, and importable again after."""

    def __init__(self, loader: Any, absent: Sequence[str]) -> None:
        self._loader = loader
        self._absent = absent

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, resources…
        return getattr(self._loader, name)

    def _hiding(self) -> list[str]:
        hidden = [name for name in self._absent if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment] # "import name" raises
        return hidden

    def _restore(self, hidden: list[str]) -> None:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        hidden = self._hiding()  # an extension module of the old kind runs here
        try:
            module: ModuleType | None = self._loader.create_module(spec)
            return module
        finally:
            self._restore(hidden)

    def exec_module(self, module: ModuleType) -> None:
        hidden = self._hiding()
        try:
            self._loader.exec_module(module)
        finally:
            self._restore(hidden)


class _SkipUnusedOptional:
    """A finder (sys.meta_path) of the modules of _UNUSED_OPTIONAL: found as usual, their
    loaders wrapped. (Not an importlib.abc.MetaPathFinder: importing that takes 25 ms.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        absent = _UNUSED_OPTIONAL.get(fullname)
        if absent is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Without(spec.loader, absent)  # type: ignore[assignment]
        return spec


if not any(isinstance(finder, _SkipUnusedOptional) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SkipUnusedOptional())
