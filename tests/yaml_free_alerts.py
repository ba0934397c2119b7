"""Read alert names and expressions from conf/prometheus/alerts.yml without a YAML library.

The file is written in one regular shape (`- alert: Name` then `expr:` inline or as a `|`
block); promtool validates the real YAML, this only lists what is in it.
"""

from __future__ import annotations

from pathlib import Path


def alerts(path: Path) -> dict[str, str]:
    """{alert name: expression with white space folded}."""
    found: dict[str, str] = {}
    name = ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if text.startswith("- alert:"):
            name = text.split(":", 1)[1].strip()
        elif text.startswith("expr:") and name:
            value = text.split(":", 1)[1].strip()
            if value == "|":
                indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
                block = []
                i += 1
                while i < len(lines) and (len(lines[i]) - len(lines[i].lstrip()) >= indent):
                    block.append(lines[i].strip())
                    i += 1
                value = " ".join(block)
                i -= 1
            found[name] = " ".join(value.split())
            name = ""
        i += 1
    return found
