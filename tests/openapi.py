"""Check an HTTP answer against an OpenAPI 3.1 document (admin and self-service tests)."""

from __future__ import annotations

from typing import Any

import jsonschema


def check_answer(
    document: dict[str, Any],
    template: str,
    method: str,
    status: int,
    content_type: str,
    body: Any,
) -> None:
    """The status is documented for the operation and the body matches its schema."""
    operation = document["paths"][template][method.lower()]
    spec = operation["responses"].get(str(status))
    assert spec is not None, f"{method} {template} answered undocumented {status}"
    content = spec.get("content")
    if content is None:
        assert body is None
        return
    [(media_type, media)] = content.items()
    assert content_type == media_type
    jsonschema.validate(body, {**media["schema"], "components": document["components"]})
