"""gateway: an API-key gateway in front of existing HTTP backends.

The foundation (`foundation/`: configuration, database, problems, timers, …; and
`http1`, `tls`, `tracing`) imports no capability; each capability package says in its
docstring what it may import; the composition root (`runtime`, `resources`) wires them
together, `app` is the admin application over it, `cli`, `serve` and `demo` run it:
the top of the package holds only these. `tests/unit/test_layers.py` enforces it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from types import ModuleType


class _SourceFirst(MetaPathFinder):
    """Finds `gateway.*` modules as `.py` files only, never as an extension module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("gateway.") or not path:
            return None
        for entry in path:
            finder = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES))
            spec = finder.find_spec(fullname, target)
            if spec is not None:
                return spec
        return None


if os.environ.get("GATEWAY_COMPILE") == "0" and not any(
    isinstance(finder, _SourceFirst) for finder in sys.meta_path
):
    # Plain Python wherever the environment asks for it, even beside a mypyc build
    # (which Python would import first): how the fallback is tested, and a way to
    # tell a fault of the compiled build from one of the code.
    sys.meta_path.insert(0, _SourceFirst())
