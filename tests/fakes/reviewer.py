"""A scripted stand-in for the Kubernetes API's TokenReview and SubjectAccessReview, for
tests of the gateway's access decisions and their wiring (the real API server's answers are
tested in tests/integration/test_access.py)."""

from __future__ import annotations

import asyncio

from rolegate_gateway.auth.access import Identity, Review

__all__ = ["APP_A", "Reviewer"]

APP_A = Identity(user="system:serviceaccount:team-a:app-a", groups=("system:serviceaccounts",))


class Reviewer:
    """Answers TokenReviews from ``tokens`` and SubjectAccessReviews from ``grants``;
    ``down`` makes every call raise as an unreachable API server does; ``gate`` holds calls."""

    def __init__(self) -> None:
        self.tokens: dict[str, Identity] = {"good": APP_A}
        self.grants: set[tuple[str, str, str]] = {(APP_A.user, "team-a", "extract")}
        self.token_calls = 0
        self.access_calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def token(self, token: str) -> Review:
        self.token_calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise OSError("Connection refused")
        identity = self.tokens.get(token)
        return Review(identity, "" if identity else "invalid bearer token")

    async def allowed(self, identity: Identity, namespace: str, name: str) -> tuple[bool, str]:
        self.access_calls += 1
        if self.down:
            raise OSError("Connection refused")
        return (identity.user, namespace, name) in self.grants, ""

    async def close(self) -> None:
        pass
