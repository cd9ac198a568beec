"""The allow-list decision for sources a request names (pure), and its I/O wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest

from eostream.shared import sources_policy
from eostream.shared.sources_policy import GENERIC, SourceNotAllowedError, SourcePolicy, refusal

POLICY = SourcePolicy.build(
    ["/data", "s3://eostream", "s3://mirror/sentinel-2"],
    hosts=["earth-search.aws.element84.com", "*.amazonaws.com"],
)
PUBLIC = ["52.92.1.1"]


@pytest.mark.parametrize(
    "uri",
    [
        "/data/scene/item.json",
        "file:///data/scene/B04.tif",
        "file://localhost/data/x.tif",
        "s3://eostream/scenes/item.json",
        "s3://mirror/sentinel-2/T29RKH/B04.tif",
        "https://earth-search.aws.element84.com/v1/collections/x/items/y",
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/B04.tif",
    ],
)
def test_allowed(uri: str) -> None:
    assert refusal(uri, POLICY, PUBLIC) is None


@pytest.mark.parametrize(
    ("uri", "addresses", "reason"),
    [
        ("/etc/passwd", [], "outside the allowed roots"),
        ("file:///etc/passwd", [], "outside the allowed roots"),
        ("/data/../etc/passwd", [], "outside the allowed roots"),
        ("/data2/x.tif", [], "outside the allowed roots"),
        ("file://otherhost/data/x.tif", [], "not an absolute local path"),
        ("relative/item.json", [], "not an absolute local path"),
        ("/vsicurl/http://169.254.169.254/", [], "a GDAL virtual file system"),
        ("s3://secrets/key", [], "not in an allowed bucket"),
        ("s3://mirror/other/B04.tif", [], "not in an allowed bucket"),
        ("s3://mirror/sentinel-2/../other/B04.tif", [], "a traversing key"),
        ("https://evil.example.com/item.json", PUBLIC, "host not allowed"),
        ("https://x.amazonaws.com/a.tif", ["169.254.169.254"], "a private"),
        ("https://x.amazonaws.com/a.tif", ["10.0.0.5"], "a private"),
        ("https://x.amazonaws.com/a.tif", ["52.92.1.1", "127.0.0.1"], "a private"),
        ("https://x.amazonaws.com/a.tif", ["::ffff:127.0.0.1"], "a private"),
        ("https://x.amazonaws.com/a.tif", ["fe80::1"], "a private"),
        ("https://x.amazonaws.com/a.tif", [], "does not resolve"),
        ("ftp://earth-search.aws.element84.com/x", PUBLIC, "scheme 'ftp'"),
        ("zip+file:///data/x.zip!/a.tif", [], "scheme"),
        ("/data/x.tif\x00.json", [], "control characters"),
        ("http://[bad/x", PUBLIC, "not a URL"),  # urlparse raises: was a 500 on every route
    ],
)
def test_refused(uri: str, addresses: list[str], reason: str) -> None:
    found = refusal(uri, POLICY, addresses)
    assert found is not None and reason in found, found


def test_networks_allow_private_ranges_only_when_listed() -> None:
    local = SourcePolicy.build([], hosts=["*"], networks=["127.0.0.0/8"])
    assert refusal("http://127.0.0.1:8080/item.json", local, ["127.0.0.1"]) is None
    assert refusal("http://10.1.1.1/item.json", local, ["10.1.1.1"]) is not None


def test_check_resolves_symlinks_and_answers_one_message(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.json").write_text("{}")
    (root / "escape.json").symlink_to("/etc/passwd")
    policy = SourcePolicy.build([str(root)], hosts=["*"])
    sources_policy.check(str(root / "ok.json"), policy)
    answers = set()
    for uri in (str(root / "escape.json"), "/etc/passwd", "/etc/no-such-file", "gopher://x"):
        with pytest.raises(SourceNotAllowedError) as caught:
            sources_policy.check(uri, policy)
        answers.add(str(caught.value))
    assert answers == {GENERIC}


def test_a_symlink_before_a_dotdot_is_resolved_as_the_system_opens_it(tmp_path: Path) -> None:
    """``root/link/../item.json`` opens ``<link's target>/../item.json``: the text's ``..``
    cancelled the link (normpath), so a file outside the roots was read and classified."""
    root, secret = tmp_path / "allowed", tmp_path / "secret"
    (secret / "sub").mkdir(parents=True)
    (secret / "item.json").write_text("{}")
    root.mkdir()
    (root / "item.json").write_text("{}")
    (root / "link").symlink_to(secret / "sub")
    policy = SourcePolicy.build([str(root)], hosts=["*"])
    sources_policy.check(str(root / "item.json"), policy)
    sources_policy.check(f"{root}/sub/../item.json", policy)  # a plain ".." inside the root
    for uri in (f"{root}/link/../item.json", f"file://{root}/link/../item.json"):
        with pytest.raises(SourceNotAllowedError):
            sources_policy.check(uri, policy)
    with pytest.raises(SourceNotAllowedError):
        sources_policy.check("http://[bad/x", policy)


def test_check_resolves_every_address_of_the_host() -> None:
    policy = SourcePolicy.build([], hosts=["*"])

    def resolve(host: str, port: int) -> list[str]:
        return {"good.test": ["52.92.1.1"], "rebind.test": ["52.92.1.1", "10.0.0.1"]}.get(host, [])

    sources_policy.check("https://good.test/a.tif", policy, resolve)
    for uri in ("https://rebind.test/a.tif", "https://unknown.test/a.tif", "http://x:99999/"):
        with pytest.raises(SourceNotAllowedError):
            sources_policy.check(uri, policy, resolve)
