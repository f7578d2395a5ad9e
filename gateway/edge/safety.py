"""Step 1 of the pipeline: refuse request targets the gateway cannot treat safely.

What is refused here never reaches matching, so the path the policy sees is
unambiguous and is the exact path sent upstream. The message itself (protocol,
header size, framing) was judged by the reader before (`http1.reader`). The rules
live in `policy.paths`, so that `gateway policy explain` judges a target exactly
as the gateway does.
"""

from __future__ import annotations

from gateway.policy.paths import Target, check_target

__all__ = ["Target", "check_target"]
