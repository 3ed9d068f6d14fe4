"""Pseudonymous user ids for logs and alerts: a keyed HMAC, stable per key.

The same user gets the same pseudonym as long as the key stays the same, so an
on-call engineer can follow one user through logs and alerts without seeing who
it is; without the key a pseudonym cannot be turned back into a user id or
checked against a guess. The key comes from SHOPSTREAM_PSEUDONYM_KEY.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymizer:
    __slots__ = ("_key",)

    def __init__(self, key: str | bytes):
        if not key:
            raise ValueError("a pseudonym key is required")
        self._key = key.encode() if isinstance(key, str) else key

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
        return "u_" + digest[:16]

    def __repr__(self) -> str:
        return "Pseudonymizer(<key hidden>)"  # never print the key
