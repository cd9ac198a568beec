"""registry-bridge domain errors."""

from __future__ import annotations

from eostream.shared.errors import EostreamError, RetryableError


class BridgeError(EostreamError):
    """Base of registry-bridge errors."""


class RefusedError(BridgeError):
    """A model version breaks the contract or fails verification: it is never shipped."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = tuple(reasons)


class NotReadyError(BridgeError):
    """The version is not complete yet (still registering, tags not set): try again later."""


class PromotionError(BridgeError, ValueError):
    """A promote or rollback request cannot be carried out (unknown version, nothing to roll
    back to, version refused by the gate...). The message says what to do instead."""


class VersionNotFoundError(BridgeError):
    """The registry has no such model version."""


class RegistryUnavailableError(RetryableError):
    """MLflow does not answer."""


class AuditUnavailableError(BridgeError):
    """The audit log cannot be read now (the object store does not answer)."""


class NotAuthenticatedError(BridgeError):
    """A write request came without a valid credential (answered 401)."""


class NotAllowedError(BridgeError):
    """A valid credential whose role may not do this (answered 403)."""
