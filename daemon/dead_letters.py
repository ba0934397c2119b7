"""The dead-letter document (``Q:dead`` entries): built, decoded, and the body rebuilt.

The JSON shape is a contract (docs: "Redis keys for queue Q"): body (base64 when it is not
UTF-8), body_encoding, error, attempts, worker, failed_at. daemon/reliable.py re-exports
these names, where callers have always imported them from.
"""

from __future__ import annotations

import base64
import json
from typing import Any

MAX_ERROR_CHARS = 2000  # of a handler's error text kept in a dead letter: bounded growth


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` as valid UTF-8 (lone surrogates backslash-escaped), cut to `limit` characters.

    Handler errors may carry surrogate-escaped file names: encoding them would raise.
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more characters]"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_entry(
    body: bytes, error: str, attempts: int, worker: str, failed_at: float
) -> bytes:
    """The JSON document stored in ``Q:dead``; the body is base64 when it is not UTF-8.

    The error text is capped (MAX_ERROR_CHARS): a full Redis must not fill further with it.
    """
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    doc = {
        "body": text,
        "body_encoding": encoding,
        "error": safe_text(error, MAX_ERROR_CHARS),
        "attempts": attempts,
        "worker": safe_text(worker),
        "failed_at": failed_at,
    }
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def parse_dead_letter(entry: bytes) -> dict[str, Any]:
    """Decode a dead letter for display; never raises on foreign or damaged entries."""
    try:
        doc = json.loads(entry)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        return {"body": None, "error": f"unreadable dead letter ({exc})", "raw": entry[:200].hex()}
    return doc


def dead_letter_body(doc: dict[str, Any]) -> bytes | None:
    """The original task body of a decoded dead letter, or None when it cannot be rebuilt."""
    body = doc.get("body")
    if not isinstance(body, str):
        return None
    if doc.get("body_encoding") == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            return None
    return body.encode("utf-8")
