"""atheris: the policy loader refuses bad input with PolicyError, never anything else."""

import contextlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gateway.foundation.config import Config
    from gateway.policy.loader import PolicyError, _FileLoader
    from gateway.policy.scopes import Catalogue

CATALOGUE = Catalogue({name: d.implies for name, d in Config().scopes.items()})
SEED = (Path(__file__).parent.parent / "policies" / "projects.yaml").read_text()


def one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    text = provider.ConsumeUnicodeNoSurrogates(4096)
    if provider.ConsumeBool():
        cut = len(text) % (len(SEED) + 1)
        text = SEED[:cut] + text + SEED[cut:]
    with contextlib.suppress(PolicyError):
        _FileLoader(Path("fuzz.yaml"), text, CATALOGUE, frozenset({"core"})).routes()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
