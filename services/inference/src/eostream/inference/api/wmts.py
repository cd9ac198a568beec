"""OGC WMTS 1.0.0 capabilities (RESTful encoding) of one tiled layer: the document a desktop GIS
(QGIS "WMS/WMTS" connections) reads to find the tile URL template and the tile matrices."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from morecantile import TileMatrixSet


def _matrix_xml(tms: TileMatrixSet, minzoom: int, maxzoom: int) -> str:
    rows = []
    for z in range(minzoom, maxzoom + 1):
        m = tms.matrix(z)
        x, y = m.pointOfOrigin  # in the CRS's own axis order, as the tile matrix set has it
        rows.append(
            "<TileMatrix>"
            f"<ows:Identifier>{escape(m.id)}</ows:Identifier>"
            f"<ScaleDenominator>{m.scaleDenominator!r}</ScaleDenominator>"
            f"<TopLeftCorner>{x!r} {y!r}</TopLeftCorner>"
            f"<TileWidth>{m.tileWidth}</TileWidth><TileHeight>{m.tileHeight}</TileHeight>"
            f"<MatrixWidth>{m.matrixWidth}</MatrixWidth><MatrixHeight>{m.matrixHeight}</MatrixHeight>"
            "</TileMatrix>"
        )
    return "".join(rows)


def capabilities(
    *,
    title: str,
    layer: str,
    tms: TileMatrixSet,
    bounds: tuple[float, float, float, float],
    minzoom: int,
    maxzoom: int,
    url_template: str,
    self_url: str,
) -> str:
    """The capabilities document of ``layer``: one style, PNG tiles at ``url_template`` (with
    ``{TileMatrix}``, ``{TileCol}``, ``{TileRow}``) in the tile matrices ``minzoom..maxzoom``."""
    west, south, east, north = bounds
    tms_id = str(tms.id)
    crs = tms.crs.to_epsg()
    supported = f"urn:ogc:def:crs:EPSG::{crs}" if crs else escape(str(tms.crs))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" '
        'xmlns:ows="http://www.opengis.net/ows/1.1" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'version="1.0.0">'
        "<ows:ServiceIdentification>"
        f"<ows:Title>{escape(title)}</ows:Title>"
        "<ows:ServiceType>OGC WMTS</ows:ServiceType>"
        "<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>"
        "</ows:ServiceIdentification>"
        '<ows:OperationsMetadata><ows:Operation name="GetCapabilities"><ows:DCP><ows:HTTP>'
        f'<ows:Get xlink:href={quoteattr(self_url)}><ows:Constraint name="GetEncoding">'
        "<ows:AllowedValues><ows:Value>RESTful</ows:Value></ows:AllowedValues>"
        "</ows:Constraint></ows:Get></ows:HTTP></ows:DCP></ows:Operation></ows:OperationsMetadata>"
        "<Contents><Layer>"
        f"<ows:Title>{escape(title)}</ows:Title>"
        f"<ows:Identifier>{escape(layer)}</ows:Identifier>"
        '<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">'
        f"<ows:LowerCorner>{west!r} {south!r}</ows:LowerCorner>"
        f"<ows:UpperCorner>{east!r} {north!r}</ows:UpperCorner>"
        "</ows:WGS84BoundingBox>"
        '<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>'
        "<Format>image/png</Format>"
        f"<TileMatrixSetLink><TileMatrixSet>{escape(tms_id)}</TileMatrixSet></TileMatrixSetLink>"
        f'<ResourceURL format="image/png" resourceType="tile" template={quoteattr(url_template)}/>'
        "</Layer>"
        "<TileMatrixSet>"
        f"<ows:Identifier>{escape(tms_id)}</ows:Identifier>"
        f"<ows:SupportedCRS>{supported}</ows:SupportedCRS>"
        f"{_matrix_xml(tms, minzoom, maxzoom)}"
        "</TileMatrixSet></Contents></Capabilities>"
    )
