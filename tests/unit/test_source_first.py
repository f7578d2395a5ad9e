"""`GATEWAY_COMPILE=0` at run time: every module of the compiled request path is
imported from its source, even where its mypyc build sits beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from tests.support import ROOT

_COMPILED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["gateway"]["compiled"]
_PRINT_FILES = (
    "import importlib, sys\n"
    "for name in sys.argv[1:]:\n"
    "    print(importlib.import_module(name).__file__)\n"
)


def _files(compile_flag: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_COMPILE"}
    if compile_flag is not None:
        env["GATEWAY_COMPILE"] = compile_flag
    names = [path.removesuffix(".py").replace("/", ".") for path in _COMPILED]
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_FILES, *names],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split()


def test_plain_python_is_imported_when_asked_for() -> None:
    files = _files("0")
    assert len(files) == len(_COMPILED) and all(f.endswith(".py") for f in files), files


def test_the_build_is_imported_otherwise_where_there_is_one() -> None:
    built = {p for p in _COMPILED if list((ROOT / p).parent.glob((ROOT / p).stem + ".*.so"))}
    files = _files(None)
    assert sum(f.endswith(".so") for f in files) == len(built)
