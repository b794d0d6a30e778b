"""The Lean versions this deployment serves, and what a request may ask of them.

The default version is the deployment's own (OPROVER_LEAN_VERSION); others exist while verify workers of that
version announce themselves (services/lean_workers.py). Proof jobs, `/v1/verify` and `/v1/models` all answer
from here, so a version or a header the workers could never check is refused the same way at every door.
"""

from __future__ import annotations

from typing import Any

from api.gateway import Gateway
from services import lean_workers
from services.errors import RequestError
from services.lean.checker import require_imports_loaded
from services.lean.policy import header_parts, header_violations


class LeanVersions:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.settings = gateway.settings

    def served(self) -> dict[str, dict[str, Any]]:
        """Lean versions served right now, from what live verify workers announce, plus the default."""
        versions: dict[str, dict[str, Any]] = {self.settings.lean.version: {"default": True, "workers": 0}}
        for info in lean_workers.live(self.gw.redis):
            entry = versions.setdefault(info["version"], {"default": False, "workers": 0})
            entry["workers"] += 1
            entry.update({k: v for k, v in info.items() if k in ("lean", "mathlib", "repl", "imports")})
        return versions

    def resolve(self, requested: str | None) -> str | None:
        """The version a job names: None for the default, a served one as asked, else a 400 listing them."""
        if requested is None or requested == self.settings.lean.version:
            return None
        available = self.served()
        if requested not in available:
            raise RequestError(
                f"lean_version {requested!r} is not served here; available: {', '.join(sorted(available))}",
                param="lean_version",
                code="unknown_lean_version",
            )
        return requested

    def check_header(self, header: str, lean_version: str | None) -> None:
        """A 400 (param `header`) now for a header the verify workers could never check, instead of a job that
        fails in its first verification. The workers' REPLs import the deployment's header (OPROVER_LEAN_HEADER,
        the same setting the gateway reads) unless live workers of that version announce their own imports."""
        if len(header) > self.settings.prove.max_statement_chars:
            raise RequestError(
                f"header is longer than {self.settings.prove.max_statement_chars} characters",
                param="header",
                code="too_long",
            )
        # The header is sent to Lean as a command of its own: the checker's allow-list refuses it there too, but
        # only after a round has been generated; the requester's own text earns a 400 now.
        refused = header_violations(header)
        if refused:
            raise RequestError(
                f"header is refused by the integrity policy: {refused[0].rule}", param="header", code="header_refused"
            )
        version = lean_version or self.settings.lean.version
        announced = self.served().get(version, {}).get("imports") if lean_version else None
        loaded = announced if isinstance(announced, list) else header_parts(self.settings.lean.header)[0]
        require_imports_loaded(header_parts(header)[0], loaded)
