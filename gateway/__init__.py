"""gateway: an API-key gateway in front of existing HTTP backends.

Foundation modules (`config`, `problems`, `database`, `timers`, `http1`, …) import no
capability; each capability package says in its docstring what it may import; the
composition root (`runtime`, `resources`) wires them together, `app` is the admin
application over it, `cli`, `serve` and `demo` run it. `tests/unit/test_layers.py`
enforces it.
"""
