"""atheris: the key parser never crashes and accepts only checksummed keys."""

import sys

import atheris

with atheris.instrument_imports():
    from gateway.keys import format as key_format


def one(data: bytes) -> None:
    token = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(64)
    if key_format.is_well_formed(token, "gwk"):
        body = token[4:]
        assert len(body) == 38 and key_format.checksum(body[:32]) == body[32:]


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
