"""Identifiers and tokens the emulator hands out.

Contracts the ``modal`` SDK relies on:

* object ids carry Modal's type prefixes (``ap-``, ``sb-``, ``ta-``, ``st-``, ``im-``, ``en-``);
* a V1 sandbox id is ``sb-`` and exactly 22 letters or digits, and a V2 sandbox id is anything
  else (the SDK picks the sandbox implementation from the id's shape);
* a V2 sandbox's task id ends with ``V``, a V1 task id does not;
* tokens are JWT-shaped (three base64url parts) and their payload has ``exp``. The emulator signs
  them with HMAC-SHA256 under a per-server key and checks them on the task command router.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import time
from typing import Any, Mapping

__all__ = ["TokenError", "TokenMinter", "new_id", "new_sandbox_id", "new_task_id"]

_ALPHABET = string.ascii_letters + string.digits


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str) -> str:
    """A fresh object id such as ``ap-…``: the prefix, a dash and 22 random letters or digits."""
    return f"{prefix}-{_random(22)}"


def new_sandbox_id(version: int) -> str:
    """A sandbox id of the shape the SDK reads as ``version`` (1 or 2)."""
    return f"sb-{_random(22)}" if version == 1 else f"sb-{_random(26)}"


def new_task_id(version: int) -> str:
    """A task id of the shape the SDK reads as belonging to a sandbox of ``version``."""
    if version == 2:
        return f"ta-{_random(21)}V"
    return f"ta-{_random(21)}{secrets.choice(_ALPHABET.replace('V', ''))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(Exception):
    """A token that is malformed, wrongly signed or expired."""


class TokenMinter:
    """Mints and checks HS256 JWTs under a random key that never leaves the server."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def mint(self, ttl: float, **claims: Any) -> str:
        """A token valid for ``ttl`` seconds carrying ``claims`` plus ``exp`` and ``iat``."""
        now = time.time()
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps({**claims, "iat": int(now), "exp": int(now + ttl)}).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}"

    def verify(self, token: str) -> Mapping[str, Any]:
        """The claims of a token this minter made and that has not expired; else :class:`TokenError`."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWT")
        header, payload, signature = parts
        expected = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            raise TokenError("bad signature")
        try:
            claims = json.loads(_unb64(payload))
        except ValueError as exc:
            raise TokenError("unreadable payload") from exc
        if not isinstance(claims, dict) or claims.get("exp", 0) < time.time():
            raise TokenError("expired")
        return claims
