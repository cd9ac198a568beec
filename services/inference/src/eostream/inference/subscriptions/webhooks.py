"""Webhook targets: which URLs may be called (the outbound policy, against SSRF), the
CloudEvents abuse-protection handshake at creation, and the signed request of a notification.

Signatures follow the Standard Webhooks specification (``eostream.shared.webhooks``): a
per-subscription secret ``whsec_<base64 key>``, the headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>``.
The request itself is a CloudEvent in the HTTP binary content mode (``ce-*`` headers, the data
as the JSON body).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import httpx

from eostream.inference.errors import BadInputError
from eostream.inference.settings import SubscriptionsSettings
from eostream.shared import sources_policy
from eostream.shared.sources_policy import SourcePolicy

log = logging.getLogger(__name__)

NOT_ALLOWED = (
    "webhook_url is not allowed: its scheme, host or address is outside the allowed webhook "
    "targets (INFERENCE_SUBSCRIPTIONS__ALLOWED_SCHEMES / _HOSTS / _NETWORKS)"
)


class DeliveryFailed(Exception):
    """One attempt failed; ``final`` when retrying cannot help (the target is not allowed)."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


def policy(settings: SubscriptionsSettings) -> SourcePolicy:
    return SourcePolicy.build((), settings.allowed_hosts, settings.allowed_networks)


def refusal(url: str, settings: SubscriptionsSettings) -> str | None:
    """Why ``url`` may not be called (None: it may). Resolves its host (every address must be
    public, or in the allowed networks), so it blocks: async callers run it in a thread."""
    try:
        parsed = urlparse(url)
    except ValueError:  # "http://[bad/x"
        return "not a URL"
    if parsed.scheme not in settings.allowed_schemes:
        return f"scheme {parsed.scheme!r} not allowed"
    if parsed.username is not None or parsed.password is not None:
        return "credentials in the URL"
    try:
        sources_policy.check(url, policy(settings))
    except sources_policy.SourceNotAllowedError as exc:
        return exc.reason
    return None


def check_target(url: str, settings: SubscriptionsSettings) -> None:
    """At creation: the URL is allowed and answers the handshake, else BadInputError (400)."""
    reason = refusal(url, settings)
    if reason is not None:
        log.warning("refused webhook %r: %s", url, reason)
        raise BadInputError(NOT_ALLOWED)
    handshake(url, settings)


def handshake(url: str, settings: SubscriptionsSettings) -> None:
    """The CloudEvents webhook abuse protection (spec "HTTP 1.1 Web Hooks for Event Delivery",
    section 4): ``OPTIONS`` with ``WebHook-Request-Origin``; the target agrees by answering 2xx
    with ``WebHook-Allowed-Origin`` naming the origin (or ``*``). Without
    ``require_handshake``, any HTTP answer shows the URL reachable."""
    try:
        response = httpx.options(
            url,
            headers={"WebHook-Request-Origin": settings.origin},
            timeout=settings.timeout_seconds,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise BadInputError(
            f"webhook_url could not be reached ({type(exc).__name__}): no subscription made"
        ) from None
    if not settings.require_handshake:
        return
    allowed = response.headers.get("webhook-allowed-origin", "")
    if not response.is_success or allowed not in (settings.origin, "*"):
        raise BadInputError(
            f"webhook_url did not accept notifications: its answer to OPTIONS with "
            f"WebHook-Request-Origin: {settings.origin} was {response.status_code} without "
            f"WebHook-Allowed-Origin: {settings.origin} (or *) (the CloudEvents webhook "
            "handshake)"
        )


async def post(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    body: bytes,
    settings: SubscriptionsSettings,
) -> None:
    """One attempt: the URL checked again (its host may resolve elsewhere now), then POSTed
    without following redirects; anything but a 2xx answer raises DeliveryFailed."""
    reason = await asyncio.to_thread(refusal, url, settings)
    if reason is not None:
        raise DeliveryFailed(f"the webhook URL is no longer allowed: {reason}", final=True)
    try:
        response = await client.post(
            url, headers=headers, content=body, timeout=settings.timeout_seconds
        )
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:500]) from None
    if not response.is_success:
        raise DeliveryFailed(f"the webhook answered HTTP {response.status_code}")
