"""The build: setuptools, with the request path compiled by mypyc when mypy is importable.

`make install` builds it so (mypy, the stubs and the dependencies in the virtualenv, no
build isolation): a cached-key decision then costs about a quarter fewer instructions.
Anywhere mypy is missing (`pip install .` with build isolation) or `GATEWAY_COMPILE=0`
is set, the same modules run as plain Python, with the same behaviour.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).parent


# The commands that build code: mypyc's work (about a minute) is skipped for the others,
# such as the metadata pip asks for first.
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def compiled_modules() -> list[Any]:
    if os.environ.get("GATEWAY_COMPILE", "1") == "0" or not _BUILDS & set(sys.argv):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    with (HERE / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["gateway"]["compiled"]
    return list(mypycify(modules, opt_level="3", debug_level="0"))


setup(ext_modules=compiled_modules())
