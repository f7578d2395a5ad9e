"""gateway: an API-key gateway in front of existing HTTP backends.

Foundation modules (`config`, `problems`, `database`, `timers`, …) import no capability; each
capability package says in its docstring what it may import; `app`, `appkeys`,
`cli` and `serve` wire them together. `tests/unit/test_layers.py` enforces it.
"""
