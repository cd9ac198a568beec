"""Sentinel-2 band names as providers spell them: the rules live in :mod:`eostream.shared.sentinel2`
(ADR 0010), shared with inference so an event's bands are the bands inference can read."""

from __future__ import annotations

from eostream.shared.sentinel2 import EVENT_ORDER, band_id, bands_of, ordered

#: The canonical names, in the order events carry them.
CANONICAL = EVENT_ORDER
#: ``blue``, ``B2``, ``blue-jp2``, ``B08A`` -> canonical name, or None.
normalise = band_id

__all__ = ["CANONICAL", "bands_of", "normalise", "ordered"]
