"""Container healthcheck for the eostream services: GET an ops endpoint on this container.

Usage: ``python healthcheck.py [PREFIX] PATH`` (for example ``INGEST /readyz``; without PREFIX, the
image's ``EOSTREAM_ENV_PREFIX``). The port comes from ``<PREFIX>_HTTP_PORT``, the same variable the
service reads, so the check follows the service when the port is changed. Exit status 0 when the
endpoint answers 200, 1 otherwise (Docker's contract). Standard library only: the runtime images
carry no curl.
"""

from __future__ import annotations

import http.client
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) == 2 and os.environ.get("EOSTREAM_ENV_PREFIX"):
        prefix, path = os.environ["EOSTREAM_ENV_PREFIX"], argv[1]
    elif len(argv) == 3:
        prefix, path = argv[1], argv[2]
    else:
        sys.stderr.write("usage: healthcheck.py [PREFIX] PATH\n")
        return 2
    port = int(os.environ.get(f"{prefix}_HTTP_PORT", "0"))
    if port <= 0:
        sys.stderr.write(f"{prefix}_HTTP_PORT is not set to a fixed port\n")
        return 1
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read(200).decode("utf-8", errors="replace")
    except OSError as exc:
        sys.stderr.write(f"GET {path} on port {port} failed: {exc}\n")
        return 1
    finally:
        connection.close()
    if response.status != 200:
        sys.stderr.write(f"GET {path} answered {response.status}: {body}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
