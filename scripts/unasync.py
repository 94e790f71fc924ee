"""Write the blocking client from the async one: ``python scripts/unasync.py [--check]``.

httpcore's approach: the async code is the source, and the blocking code is that text with
``async`` and ``await`` dropped and each ``Async`` name swapped for its blocking twin, word
by word (the table below). The generated file is committed, so that it can be read, typed
and imported without this script; ``--check`` (and ``tests/client/test_unasync.py``) fails
when it is stale. The module docstring is replaced by one that says where the file comes from.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = {
    ROOT / "convengine/client/_async/client.py": ROOT / "convengine/client/_sync/client.py",
}
# Whole words, in this order.
SUBSTITUTIONS = (
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait\s+", ""),
    (r"\bAsyncConvClient\b", "ConvClient"),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncBaseTransport\b", "BaseTransport"),
    (r"\bAsyncShards\b", "Shards"),
    (r"\basleep\b", "sleep"),
    (r"\baclose\b", "close"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\baiter_raw\b", "iter_raw"),
    (r"\b_async\b", "_sync"),
)
DOCSTRING = re.compile(r'\A"""(.*?)"""\n', re.DOTALL)


def generated(source: str, origin: str) -> str:
    """The blocking twin of the async module text ``source`` (read from ``origin``)."""
    header = (
        f'"""Generated from ``{origin}`` by ``scripts/unasync.py``: do not edit.\n\n'
        "Edit the async source, then run ``python scripts/unasync.py``.\n"
        '"""\n'
    )
    if not DOCSTRING.match(source):
        raise ValueError(f"{origin} must begin with a docstring")
    text = DOCSTRING.sub("", source, count=1)
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return header + text


def stale() -> list[str]:
    """A unified diff per generated file that differs from what its source gives."""
    diffs = []
    for source, target in PAIRS.items():
        want = generated(source.read_text(), str(source.relative_to(ROOT)))
        have = target.read_text() if target.exists() else ""
        if want != have:
            name = str(target.relative_to(ROOT))
            lines = difflib.unified_diff(
                have.splitlines(True), want.splitlines(True), name, f"{name} (generated)"
            )
            diffs.append("".join(lines))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        diffs = stale()
        sys.stdout.write("".join(diffs))
        return 1 if diffs else 0
    for source, target in PAIRS.items():
        target.parent.mkdir(exist_ok=True)
        target.write_text(generated(source.read_text(), str(source.relative_to(ROOT))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
