"""The registry-bridge's REST API: a model's versions with their gate verdicts and aliases, and
the promoter's writes (promote, roll back), which need a credential with role ``promoter``.

    with BridgeClient("http://127.0.0.1:8001", api_key=key) as bridge:
        champion = bridge.champion("eurosat-landcover")
"""

from __future__ import annotations

from typing import Any

from eostream.client.http import RestClient, api_path, json_object
from eostream.client.schemas import ModelVersion


def _versions(body: Any) -> list[ModelVersion]:
    if not isinstance(body, list):
        raise TypeError(f"expected a list of versions, got {type(body).__name__}")
    return [ModelVersion.model_validate(row) for row in body]


class BridgeClient(RestClient):
    """A running registry-bridge, by its base URL."""

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of the model ``name``, as the registry's tags describe it."""
        return self.get(api_path("models", name), _versions)

    def champion(self, name: str) -> ModelVersion | None:
        """The version holding the ``champion`` alias, if any."""
        return next((v for v in self.versions(name) if "champion" in v.aliases), None)

    def promote(self, name: str, version: str, *, reason: str, force: bool = False) -> Any:
        """Make ``version`` champion (recorded with the credential's name and ``reason``)."""
        body = {"version": version, "reason": reason, "force": force}
        return self.call("POST", api_path("models", name, "promote"), json_object, json=body)

    def rollback(self, name: str, *, reason: str) -> Any:
        """Make the previous champion live again."""
        return self.call(
            "POST", api_path("models", name, "rollback"), json_object, json={"reason": reason}
        )
