"""Every error message docs/troubleshooting.md quotes still appears in hf_adapt's source, so a reworded or removed
error fails here until the page follows it. ``…`` in a quoted message stands for what the message fills in: each
literal piece between them must appear in one source file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"


def test_every_documented_message_is_still_raised():
    sources = [path.read_text() for path in sorted((ROOT / "hf_adapt").rglob("*.py"))]
    messages = re.findall(r"^\*\*Message:\*\* `([^`]+)`", PAGE.read_text(), flags=re.M)
    assert len(messages) >= 40, "the page quotes fewer messages than it did: keep each error, cause and fix"
    stale = []
    for message in messages:
        pieces = [piece.strip() for piece in message.split("…") if len(piece.strip()) >= 4]
        if not any(all(piece in source for piece in pieces) for source in sources):
            stale.append(message)
    assert not stale, f"docs/troubleshooting.md quotes messages hf_adapt no longer raises: {stale}"
