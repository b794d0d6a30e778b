"""Who is calling: the caller a bearer key identifies, and which jobs that caller may see.

A job belongs to the key that created it. The job records only the key's *owner id* (a SHA-256 of the key, see
`owner_id`), never the key: a Redis dump, a log line or a job read by an admin shows no usable credential. Another
key asking for the job gets the same 404 as for an unknown id, so job ids do not leak which jobs exist. Admin keys
(`OPROVER_API_ADMIN_KEYS`) see every job. With no keys configured the API is open and every job is visible.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from services.errors import NotFound, RequestError


class Unauthorized(RequestError):
    status_code = 401
    type = "authentication_error"


@dataclass(frozen=True)
class Caller:
    owner: str | None  # the key's owner id; None on an open API (no keys configured)
    admin: bool = False

    def may_see(self, job_owner: str | None) -> bool:
        return self.admin or self.owner is None or job_owner == self.owner


OPEN = Caller(owner=None)


def owner_id(key: str) -> str:
    """A stable, non-reversible id of a key: what jobs, quotas and idempotency records are filed under.

    Keys are long random secrets, so a plain SHA-256 cannot be brute-forced back; a prefix keeps it readable."""
    return "own_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def authenticate(authorization: str, keys: list[str], admin_keys: list[str]) -> Caller:
    """The caller an `Authorization: Bearer <key>` header names, or a 401.

    Every configured key is compared, each in constant time, so neither a match's position nor a prefix of a
    key can be learned from response times."""
    if not keys and not admin_keys:
        return OPEN
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        admin = _matches(token, admin_keys)
        if admin or _matches(token, keys):
            return Caller(owner=owner_id(token), admin=admin)
    raise Unauthorized("missing or invalid API key (send `Authorization: Bearer <key>`)", code="invalid_api_key")


def _matches(token: str, allowed: list[str]) -> bool:
    found = False
    for key in allowed:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def require_visible(caller: Caller, job_id: str, job_owner: str | None) -> None:
    """A 404 for a job the caller may not see, worded exactly like the one for a job that does not exist."""
    if not caller.may_see(job_owner):
        raise NotFound(f"no proof job {job_id!r} (unknown or expired)", param="id")
