"""Standard Webhooks signatures: the published test vector, and what verification refuses."""

from __future__ import annotations

import pytest

from eostream.shared import webhooks

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the published vector
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIME = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signatures_follow_the_standard_webhooks_test_vector() -> None:
    """The vector published with the Standard Webhooks reference libraries."""
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIME, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = webhooks.signed_headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TIME, VECTOR_BODY)
    assert headers["webhook-signature"] == VECTOR_SIGNATURE
    assert webhooks.verify(
        VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIME + 10, tolerance=300
    ) == (VECTOR_ID)


def test_a_fresh_secret_signs_and_verifies_and_a_rotation_keeps_both_keys() -> None:
    old, new = webhooks.new_secret(), webhooks.new_secret()
    assert old != new and old.startswith("whsec_")
    body = b'{"id": "S2A_1"}'
    headers = webhooks.signed_headers(new, "m1", 1000, body)
    both = f"{webhooks.sign(old, 'm1', 1000, body)} {headers['webhook-signature']}"
    rotated = {**headers, "webhook-signature": both}
    assert webhooks.verify(new, rotated, body, now=1000, tolerance=5) == "m1"
    assert webhooks.verify(old, rotated, body, now=1000, tolerance=5) == "m1"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"webhook-signature": ""}, "unauthorized"),
        ({"webhook-timestamp": "soon"}, "bad_signature"),
        ({"webhook-timestamp": "\u00b2"}, "bad_signature"),  # str.isdigit says yes, int() no
        ({"webhook-timestamp": "9" * 5000}, "bad_signature"),  # past int()'s 4,300 digits
        ({"webhook-timestamp": "1000\n"}, "bad_signature"),
        ({"webhook-timestamp": "1301"}, "stale_timestamp"),
        ({"webhook-id": "m2"}, "bad_signature"),
        ({"webhook-signature": "v2,abc"}, "bad_signature"),
    ],
)
def test_verification_refuses_unsigned_stale_and_forged_requests(
    change: dict[str, str], code: str
) -> None:
    body = b"{}"
    headers = {**webhooks.signed_headers("plain text secret", "m1", 1000, body), **change}
    with pytest.raises(webhooks.SignatureError) as refused:
        webhooks.verify("plain text secret", headers, body, now=1000, tolerance=300)
    assert refused.value.code == code
    assert isinstance(refused.value, ValueError)  # poison, not retryable


def test_a_changed_body_or_another_secret_does_not_verify() -> None:
    headers = webhooks.signed_headers("s1", "m1", 1000, b'{"a": 1}')
    for secret, body in (("s1", b'{"a": 2}'), ("s2", b'{"a": 1}')):
        with pytest.raises(webhooks.SignatureError):
            webhooks.verify(secret, headers, body, now=1000, tolerance=300)
