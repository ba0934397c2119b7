"""The dead-letter entry format (daemon.reliable), called directly: readable, never raising."""

from __future__ import annotations

import base64
import json

from daemon.dead_letters import dead_letter_body, dead_letter_entry, parse_dead_letter


def test_a_dead_letter_keeps_a_utf8_body_as_text_and_a_binary_body_as_base64() -> None:
    text = json.loads(dead_letter_entry("héllo".encode(), "E", 5, "w", 1.5))
    assert text["body"] == "héllo" and text["body_encoding"] == "utf-8"
    assert set(text) >= {"body", "error", "attempts", "worker", "failed_at"}
    raw = b"\xff\x00\xfe"
    binary = json.loads(dead_letter_entry(raw, "E", 5, "w", 1.5))
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == raw
    assert dead_letter_body(binary) == raw


def test_damaged_dead_letters_are_shown_not_raised() -> None:
    doc = parse_dead_letter(b"\xff not json")
    assert doc["body"] is None and "unreadable" in doc["error"]
    assert dead_letter_body(doc) is None
