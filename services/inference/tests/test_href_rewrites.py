"""Asset hrefs can be pointed at a mirror (local or S3) of the bucket an item names."""

from __future__ import annotations

from eostream.inference.scene import rewrite_href

BUCKET = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/"


def test_the_longest_matching_prefix_wins() -> None:
    rewrites = {BUCKET: "s3://mirror/cogs/", BUCKET + "29/R/KH/": "/data/29RKH/"}
    assert rewrite_href(BUCKET + "29/R/KH/2020/B04.tif", rewrites) == "/data/29RKH/2020/B04.tif"
    assert rewrite_href(BUCKET + "31/T/CJ/B04.tif", rewrites) == "s3://mirror/cogs/31/T/CJ/B04.tif"


def test_hrefs_without_a_match_are_untouched() -> None:
    assert rewrite_href("/local/B04.tif", {BUCKET: "/x/"}) == "/local/B04.tif"
    assert rewrite_href(BUCKET + "B04.tif", {}) == BUCKET + "B04.tif"
