"""Every service's log lines keep no credential: ``configure_logging`` masks the userinfo of URLs
in messages, their arguments and tracebacks (an MLflow client error names its URL whole)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from eostream.shared.redaction import redact_urls
from eostream.shared.settings import configure_logging


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    """The configured handler, writing into a buffer instead of stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO")
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        buffer = io.StringIO()
        handler.setStream(buffer)
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_log_lines_mask_url_credentials(configured: io.StringIO) -> None:
    log = logging.getLogger("eostream.test")
    uri = "http://bridge:s3cret-pass@mlflow.internal:5000"
    log.warning("reconcile failed (%s); next try in 5s", f"API request to {uri}/api failed")
    try:
        dsn = "postgresql://u:pw@db/x"
        raise ConnectionError(f"Max retries exceeded with url {uri}/ajax-api ({dsn})")
    except ConnectionError:
        log.exception("handling failed")
    err = configured.getvalue()
    assert "s3cret-pass" not in err and ":pw@" not in err
    assert "API request to http://***@mlflow.internal:5000/api failed" in err
    assert "Traceback" in err and "postgresql://***@db/x" in err
    assert "ConnectionError: Max retries exceeded with url http://***@mlflow.internal:5000" in err


def test_secrets_in_query_strings_are_masked() -> None:
    """A token or a presigned URL's signature in a query string is a credential too; other
    parameters stay readable."""
    presigned = (
        "http://minio:9000/maps/x.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20261207&X-Amz-Signature=abc123&X-Amz-Security-Token=tok9"
    )
    text = (
        f"GET https://stac.example/search?limit=10&token=t0ps3cret failed; {presigned} "
        "and https://api.example/items?API_KEY=k3y&sortby=datetime#top"
    )
    shown = redact_urls(text)
    for secret in ("t0ps3cret", "AKIA", "abc123", "tok9", "k3y"):
        assert secret not in shown, shown
    assert "search?limit=10&token=*** failed" in shown
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***" in shown
    assert "items?API_KEY=***&sortby=datetime#top" in shown
    kept = "http://h/p?monkey=1&sort_by=key&keyword=x&sort_key=a&metric_key=loss&cache-key=c"
    assert redact_urls(kept) == kept  # names that hold no secret
    assert redact_urls("(see http://h/p?token=abc), then") == "(see http://h/p?token=***), then"
    assert redact_urls("<a href='/x?a=1&amp;access_token=z'>") == (
        "<a href='/x?a=1&amp;access_token=***'>"
    )
    assert redact_urls("http://h/p?X-API-Key=k&key=g&authorization=b") == (
        "http://h/p?X-API-Key=***&key=***&authorization=***"
    )
