"""Step 1 of the pipeline: refuse request targets the gateway cannot treat safely.

What is refused here never reaches matching, so the path the policy sees is
unambiguous and is the exact path sent upstream. The message itself (protocol,
header size, framing) was judged by the reader before (`http1.reader`). The rules
live in `policy.paths`, so that `gateway policy explain` judges a target exactly
as the gateway does.
"""

from __future__ import annotations

from gateway.http1.wire import Memo
from gateway.policy.paths import Target, check_target, split_path

__all__ = ["Target", "Targets", "check_target"]


class Targets:
    """`check_target` with each path's segments remembered: the same few paths recur,
    and checking and splitting one cost 4 % of a decision's instructions. One per
    gateway, made by the composition root. A refused path is not remembered (it
    raises), and past 4,096 paths the rest are checked every time."""

    def __init__(self) -> None:
        self._segments: Memo[str, tuple[str, ...]] = Memo(split_path, 4096)

    def check(self, method: str, raw: str) -> Target:
        return check_target(method, raw, self._segments.get)
