"""atheris: the path canonicaliser either refuses (400) or yields segments that are
unambiguous: no dot segments, no "/" inside a segment, no control characters."""

import sys

import atheris

with atheris.instrument_imports():
    from gateway.foundation.problems import Problem
    from gateway.policy import paths


def one(data: bytes) -> None:
    path = "/" + atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(200)
    try:
        segments = paths.split_path(path)
    except Problem as problem:
        assert problem.status == 400
        return
    for segment in segments:
        assert segment not in (".", "..")
        assert "/" not in segment and "\\" not in segment
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
