"""Published default secrets are refused outside this machine (issue #20), and so are secrets
under 16 characters that guard a server of eostream's own (an API key, a webhook secret).

Earlier versions of docker-compose.yml and the local Kubernetes overlay shipped fixed credentials
(``eostream-local-api-key``, ``eostream-local-secret``, ...). Anybody can read them, so a service
must not accept one for a server other machines can reach. :func:`published_defaults` is the
pure decision, run by every service's settings (:class:`eostream.shared.settings.ServiceSettings`)
so a service started with one exits at once with one line naming the variables.

What counts as "this machine only" (where a published value stays allowed):

- a secret of the service's own HTTP API (an API key, a webhook secret) when the service listens
  on a loopback address (``HTTP_HOST`` 127.0.0.1, the default; never 0.0.0.0);
- a secret inside a settings piece that runs a server of its own (a ``host`` field, and a
  ``port`` that is set when the piece has one: ingest's ``PUSH__HOST``/``PUSH__PORT``) when that
  server's ``host`` is loopback; with ``port`` None the piece is served on the service's own
  server, so ``HTTP_HOST`` decides;
- the S3 secret key when the S3 endpoint is a loopback address;
- a password inside a URL (``postgresql://user:password@host/db``) when its host is loopback.

So the embedded mode (``eostream up``: keys generated per home) and the local stack
(``deploy/local/stack``, which binds 127.0.0.1 only and whose fixed local credentials the tests
use) keep working, while docker-compose, Kubernetes and any service listening on a network
address need secrets of their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

__all__ = ["PUBLISHED", "is_loopback", "published_defaults", "refusal"]

#: Values published in this repository (or by the servers it runs) as defaults.
PUBLISHED = frozenset(
    {
        "eostream",  # the local PostgreSQL password and the former Grafana default
        "eostream-local-api-key",
        "eostream-local-secret",
        "eostream-local-webhook-secret",
        "eostream-local-bridge-operator-key",
        "minioadmin",  # MinIO's own default
        "CHANGE-ME",  # deploy/k8s/base/secret.template.yaml
    }
)


#: The fewest characters of a secret that guards a server of eostream's own (an API key, a
#: webhook secret) that other machines can reach: ``INFERENCE_API_KEY=x`` was taken on 0.0.0.0.
#: Secrets eostream presents to other servers (S3, database passwords) follow those servers' rules.
MIN_LENGTH = 16

#: Fields that name who connects rather than prove it (S3 access keys are published with
#: every request): never counted as secrets.
IDENTIFIERS = frozenset({"access_key"})


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, optionally with ``:port``) names this machine
    alone. Pure: names other than ``localhost`` are not resolved, so they count as remote."""
    if not host:
        return False
    text = host.strip().lower()
    if text.startswith("["):  # [::1]:9000
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # host:port
        text = text.rsplit(":", 1)[0]
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _variable(prefix: str, path: Sequence[str]) -> str:
    return (prefix + "__".join(path)).upper()


def _url_password(value: str) -> tuple[str | None, str | None]:
    try:
        parts = urlsplit(value)
        return parts.password, parts.hostname
    except ValueError:
        return None, None


def _own_host(model: BaseModel) -> str | None:
    """The address the secrets of ``model`` guard when it is not the service's ``http_host``:
    an ``endpoint`` (S3: the server it talks to), or the ``host`` a server of its own binds."""
    fields = type(model).model_fields
    if "endpoint" in fields:
        endpoint = getattr(model, "endpoint", None)
        return endpoint if isinstance(endpoint, str) else None
    if "host" in fields and ("port" not in fields or getattr(model, "port", None) is not None):
        bind = getattr(model, "host", None)
        return bind if isinstance(bind, str) else None
    return None  # served on the service's own server


def _findings(
    model: BaseModel, path: list[str], host: str | None, own: bool = True
) -> Iterator[list[str]]:
    own_host = _own_host(model)
    if own_host is not None:
        host = own_host  # its secrets guard that endpoint, or that server of its own
        own = "endpoint" not in type(model).model_fields
    for name in type(model).model_fields:
        if name in IDENTIFIERS:
            continue
        yield from _value_findings(getattr(model, name), [*path, name], host, own)


def _published_in_url(value: str) -> bool:
    """Whether ``value`` is a URL (a DSN) carrying a published password for a host that is not
    loopback: the URL names its own server, so ``host`` (the service's) does not matter."""
    if "://" not in value or "@" not in value:
        return False
    password, url_host = _url_password(value)
    return password in PUBLISHED and not is_loopback(url_host)


def _weak(secret: str, own: bool) -> bool:
    """A published value, or a short one guarding a server of eostream's own (empty: unset)."""
    return secret in PUBLISHED or (own and 0 < len(secret) < MIN_LENGTH and "://" not in secret)


def _value_findings(
    value: Any, path: list[str], host: str | None, own: bool = True
) -> Iterator[list[str]]:
    if isinstance(value, SecretStr):
        # a DSN is a SecretStr too (ingest's pg_dsn): its password is checked like a plain one's
        secret = value.get_secret_value()
        if (_weak(secret, own) and not is_loopback(host)) or _published_in_url(secret):
            yield path
    elif isinstance(value, BaseModel):
        yield from _findings(value, path, host, own)
    elif isinstance(value, dict):
        for item in value.values():
            found = list(_value_findings(item, path, host, own))
            if found:
                yield path
                return
    elif isinstance(value, str) and _published_in_url(value):
        yield path


def published_defaults(settings: BaseModel, *, prefix: str = "") -> list[str]:
    """The variables (``prefix`` + field path) that hold a published default secret for a server
    other machines can reach; empty when there is none. Pure."""
    own = getattr(settings, "http_host", None)
    found: list[str] = []
    for path in _findings(settings, [], own if isinstance(own, str) else None):
        variable = _variable(prefix, path)
        if variable not in found:
            found.append(variable)
    return found


def refusal(settings: BaseModel, *, prefix: str = "") -> str | None:
    """One line telling the operator what to change, or None when no published secret is used."""
    found = published_defaults(settings, prefix=prefix)
    if not found:
        return None
    return (
        f"{', '.join(found)} {'holds' if len(found) == 1 else 'hold'} a published default "
        f"secret (or one under {MIN_LENGTH} characters), refused for a server other machines "
        "can reach; set a secret of your own "
        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or keep the "
        "service on 127.0.0.1"
    )
