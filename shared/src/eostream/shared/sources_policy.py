"""Which sources a request may name: local folders, S3 buckets, HTTP hosts (an allow-list).

A REST user names STAC items and assets by URI; the service must read only what the operator
allows. :func:`refusal` is the pure decision (URI + the addresses its host resolves to ->
``None`` or the reason); :func:`check` does the I/O around it (resolves symlinks and host names)
and raises :class:`SourceNotAllowedError`. The reason is for the log only: callers answer every
refusal with one message, so an answer never tells whether a file exists or a port is open.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from eostream.shared.errors import ObjectUnreadableError

__all__ = ["GENERIC", "SourceNotAllowedError", "SourcePolicy", "check", "refusal"]

#: The one answer a client gets for a refused source, whatever the reason.
GENERIC = "the source is not allowed or not readable (see the service's allowed sources)"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceNotAllowedError(ObjectUnreadableError):
    """A URI outside the allowed roots, buckets and hosts (or one that cannot be resolved)."""

    def __init__(self, reason: str) -> None:
        super().__init__(GENERIC)
        self.reason = reason  # for the log, never for the client

    def __str__(self) -> str:
        return GENERIC


@dataclass(frozen=True)
class SourcePolicy:
    """Allowed local folders (absolute), S3 ``bucket`` or ``bucket/prefix`` entries, HTTP host
    patterns (``*``, ``host`` or ``*.domain``) and networks allowed despite being private."""

    roots: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def build(
        cls, roots: Iterable[str], hosts: Iterable[str] = (), networks: Iterable[str] = ()
    ) -> SourcePolicy:
        """``roots`` mixes local folders and ``s3://bucket[/prefix]`` entries."""
        local: list[str] = []
        buckets: list[str] = []
        for root in roots:
            if not root:
                continue
            if root.startswith("s3://"):
                buckets.append(root[5:].strip("/"))
            else:
                local.append(os.path.realpath(root))
        return cls(
            roots=tuple(local),
            buckets=tuple(b for b in buckets if b),
            hosts=tuple(h.lower() for h in hosts),
            networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _host_allowed(host: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _address_allowed(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if any(ip in n for n in networks):
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def local_path(uri: str) -> str | None:
    """The absolute path a local URI (a path or ``file://``) names, as written (``..`` and all);
    None if remote, unparseable or not a plain local file name."""
    try:
        parsed = urlparse(uri)
    except ValueError:
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None
        raw = unquote(parsed.path)
    elif parsed.scheme == "":
        raw = uri
    else:
        return None
    return raw if raw.startswith("/") else None


def local_target(uri: str) -> str | None:
    """The absolute, normalised path a local URI names (:func:`local_path`, its ``..`` taken
    as text); the file opened may differ where a symlink comes before a ``..``, which
    :func:`check` resolves as the system does."""
    raw = local_path(uri)
    return os.path.normpath(raw) if raw is not None else None


def refusal(uri: str, policy: SourcePolicy, addresses: Sequence[str] = ()) -> str | None:
    """Why ``uri`` may not be read under ``policy`` (None: it may). Pure.

    ``addresses`` are what an http(s) URI's host resolves to: every one must be public, or in
    the allowed networks (none given: refused).
    """
    if "\x00" in uri or any(c in uri for c in "\r\n"):
        return "control characters"
    try:
        parsed = urlparse(uri)
    except ValueError:  # "http://[bad/x": not a URL
        return "not a URL"
    if parsed.scheme in ("", "file"):
        path = local_target(uri)
        if path is None:
            return "not an absolute local path"
        if path.startswith("/vsi"):
            return "a GDAL virtual file system"
        if not any(_under(path, root) for root in policy.roots):
            return "outside the allowed roots"
        return None
    if parsed.scheme == "s3":
        target = f"{parsed.netloc}/{parsed.path.lstrip('/')}"
        if ".." in parsed.path.split("/"):
            return "a traversing key"
        if not any(_under(target, b) for b in policy.buckets):
            return "not in an allowed bucket"
        return None
    if parsed.scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        if not host:
            return "no host"
        if not _host_allowed(host, policy.hosts):
            return "host not allowed"
        if not addresses:
            return "host does not resolve"
        if not all(_address_allowed(a, policy.networks) for a in addresses):
            return "a private, loopback or link-local address"
        return None
    return f"scheme {parsed.scheme!r} not allowed"


def _resolve(host: str, port: int) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port)})
    except (OSError, UnicodeError):
        return []


def check(
    uri: str, policy: SourcePolicy, resolve: Callable[[str, int], list[str]] = _resolve
) -> None:
    """Raise :class:`SourceNotAllowedError` unless ``uri`` may be read: a local path is checked
    with its symlinks resolved, an http(s) host with every address it resolves to."""
    try:
        parsed = urlparse(uri)
    except ValueError:
        raise SourceNotAllowedError("not a URL") from None
    addresses: list[str] = []
    if parsed.scheme in ("http", "https") and parsed.hostname:
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise SourceNotAllowedError("bad port") from None
        addresses = resolve(parsed.hostname, port)
    reason = refusal(uri, policy, addresses)
    if reason is None and parsed.scheme in ("", "file"):
        path = local_path(uri)
        if path is not None:
            # a symlink may point outside; realpath of the path as written resolves it before
            # a ".." after it, as opening the file does ("root/link/../x" is not "root/x")
            reason = refusal(os.path.realpath(path), policy)
    if reason is not None:
        raise SourceNotAllowedError(reason)
