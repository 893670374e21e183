"""Decoding one protocol line from the sandbox within fixed bounds.

``json.loads`` on hostile input can cost far more memory than the line's size (a line of ``{},``
decodes to one dict per three bytes, some 25 times its size) or raise ``RecursionError`` on deep
nesting. :func:`decode` first bounds what the line can decode to, using byte counts taken at C
speed, and only then decodes it. Every failure is a :class:`~sandboxkit.protocol.Violation`
naming the limit and the option that sets it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from typing import Any

from sandboxkit.protocol import Violation

__all__ = ["MessageLimits", "decode"]

# A JSON string, escapes included (unrolled so that long strings match in one fast run). The
# closing quote is optional so that a started match never fails: an unterminated string would
# otherwise make the scan retry from every later quote, quadratic in the line's length.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


@dataclasses.dataclass(frozen=True)
class MessageLimits:
    """What one message from the sandbox may cost to decode."""

    #: Largest line, in bytes (option ``max_message_bytes``).
    max_bytes: int = 256 * 1024 * 1024
    #: Deepest nesting of lists and objects (option ``max_message_depth``).
    max_depth: int = 100
    #: Most values (containers, scalars, object keys not counted) in one message (option ``max_message_items``).
    max_items: int = 1_000_000


def decode(line: bytes, limits: MessageLimits) -> Any:
    """The JSON value of ``line``; raises Violation if it is not JSON or breaks ``limits``."""
    opens = line.count(b"{") + line.count(b"[")
    # An upper bound on the values in the line, whatever its strings hold.
    if opens > limits.max_depth or opens + line.count(b",") >= limits.max_items:
        _check_structure(line, limits)
    try:
        # Strictly UTF-8 (as the driver writes): json.loads would also guess UTF-16 or UTF-32
        # from raw bytes, which the byte counts above do not read correctly.
        return json.loads(line.decode("utf-8", "surrogatepass"))
    except RecursionError:
        raise Violation(f"a message nested deeper than this host can decode (max_message_depth={limits.max_depth})") from None
    except (ValueError, UnicodeDecodeError):
        raise Violation(f"a line was not JSON: {line[:80]!r}") from None
    except MemoryError:
        raise Violation("a message did not fit in the host's memory (lower max_message_bytes)") from None


def _check_structure(line: bytes, limits: MessageLimits) -> None:
    """The exact count of values and nesting depth, outside strings (the slow path)."""
    skeleton = _STRING.sub(b"0", line)
    opens = skeleton.count(b"{") + skeleton.count(b"[")
    items = opens + skeleton.count(b",") + 1
    if items > limits.max_items:
        raise Violation(f"a message held more than {limits.max_items} values (max_message_items)")
    if opens > limits.max_depth:
        brackets = _NOT_BRACKET.sub(b"", skeleton)
        depth = max(itertools.accumulate(_DEPTH_STEP[b] for b in brackets), default=0)
        if depth > limits.max_depth:
            raise Violation(f"a message nested deeper than {limits.max_depth} levels (max_message_depth)")
