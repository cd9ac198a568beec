"""The inference service's REST API: results (search, STAC search with CQL2, statistics, files),
the deployed model, OGC API - Processes (run a chosen model on a scene, as a job) and class areas.

    with InferenceClient("http://127.0.0.1:8000", api_key=key) as api:
        page = api.search_results(bbox=(2.7, 42.1, 2.9, 42.3), datetime="2020-01-01/2021-12-31")
        stats = api.statistics(page.results[0].scene_id)
        job = api.execute({"scene": item_href, "model": "models:/eurosat-landcover/1"})
        job = api.wait(job.job_id)
        png = api.quicklook(job_result.scene_id, model_version="1")

Reads need no key; writes (``execute``) send the API key given here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from eostream.client.errors import ApiError
from eostream.client.http import RestClient, api_path, json_object
from eostream.client.schemas import Job, Models, ProcessList, ResultPage, ResultSummary, Statistics

PROCESS = "classify-scene"
Bbox = Sequence[float]


def _bbox(bbox: Bbox | str | None) -> str | None:
    """The query parameter: ``minx,miny,maxx,maxy``; a string is sent as it is (the server
    checks it and says what is wrong)."""
    if bbox is None or isinstance(bbox, str):
        return bbox
    return ",".join(str(v) for v in bbox)


def _features(body: Any) -> list[dict[str, Any]]:
    """The items of a STAC ``FeatureCollection``."""
    features = json_object(body)["features"]
    if not isinstance(features, list):
        raise TypeError(f"features is {type(features).__name__}, not a list")
    return features


class InferenceClient(RestClient):
    """A running inference service, by its base URL."""

    # -- results ------------------------------------------------------------------------------
    def search_results(
        self,
        *,
        bbox: Bbox | None = None,
        datetime: str | None = None,
        scene_id: str | None = None,
        class_name: str | None = None,
        min_share: float | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> ResultPage:
        """``GET /results``: results by area (WGS84 bbox), time (RFC 3339 instant or ``a/b``),
        scene, class share and model."""
        params = {
            "bbox": _bbox(bbox), "datetime": datetime, "scene_id": scene_id, "class": class_name,
            "min_share": min_share, "model_name": model_name, "model_version": model_version,
            "limit": limit, "offset": offset,
        }  # fmt: skip
        return self.get("/results", ResultPage.model_validate, **params)

    def stac_search(
        self,
        *,
        bbox: Bbox | None = None,
        datetime: str | None = None,
        filter: str | dict[str, Any] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """``POST /stac/search``: result STAC items, with a CQL2 filter (text or JSON) on class
        shares, model version and confidence (``/stac/queryables``)."""
        body: dict[str, Any] = {"limit": limit}
        if bbox is not None:
            body["bbox"] = list(bbox)
        if datetime is not None:
            body["datetime"] = datetime
        if filter is not None:
            body["filter"] = filter
            body["filter-lang"] = "cql2-text" if isinstance(filter, str) else "cql2-json"
        return self.call("POST", "/stac/search", _features, json=body)

    def result(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> ResultSummary:
        """The latest result of a scene, or the one ``model_name`` (and ``model_version``)
        made: versions are numbered per model, so name the model where several map."""
        return self.get(
            api_path("results", scene_id),
            ResultSummary.model_validate,
            model_version=model_version,
            model_name=model_name,
        )

    def item(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> dict[str, Any]:
        """The result's STAC item."""
        return self.get(
            api_path("results", scene_id, "item"),
            json_object,
            model_version=model_version,
            model_name=model_name,
        )

    def statistics(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> Statistics:
        """Per-class pixels, area (km2) and share of a result."""
        return self.get(
            api_path("results", scene_id, "statistics"),
            Statistics.model_validate,
            model_version=model_version,
            model_name=model_name,
        )

    def quicklook_url(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> str:
        return self._file_url(scene_id, "quicklook", model_version, model_name)

    def cog_url(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> str:
        """The classification COG's URL (HTTP Range requests: GDAL opens it with /vsicurl/)."""
        return self._file_url(scene_id, "cog", model_version, model_name)

    def quicklook(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> bytes:
        """The quicklook PNG (classes in the model's colours, with the legend)."""
        url = self.quicklook_url(scene_id, model_version=model_version, model_name=model_name)
        return self.download(url)

    def cog(
        self, scene_id: str, *, model_version: str | None = None, model_name: str | None = None
    ) -> bytes:
        """The classification COG (uint8 class indices, nodata 255)."""
        return self.download(
            self.cog_url(scene_id, model_version=model_version, model_name=model_name)
        )

    def download(self, url: str) -> bytes:
        """The bytes behind a URL or path of this API (e.g. an ``aggregate`` map href); the API
        key goes only to this API's own URLs."""
        return self.request("GET", url).content

    def _file_url(
        self, scene_id: str, name: str, model_version: str | None, model_name: str | None
    ) -> str:
        url = self.url + api_path("results", scene_id, name)
        params = {
            k: v for k, v in (("model_version", model_version), ("model_name", model_name)) if v
        }
        return f"{url}?{urlencode(params)}" if params else url

    def aggregate(
        self,
        *,
        bbox: Bbox | str | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        model_version: str | None = None,
        model_name: str | None = None,
    ) -> dict[str, Any]:
        """Class areas (km2) inside an area per acquisition date: ``GET /results/aggregate`` with
        a bbox, POST with a GeoJSON geometry (it may be too long for a URL). ``model_name``:
        that model's maps only (version numbers are each model's own)."""
        if (bbox is None) == (intersects is None):
            raise ValueError("give the area: a bbox or an intersects geometry")
        params: dict[str, Any] = {
            "datetime": datetime,
            "model_version": model_version,
            "model_name": model_name,
        }
        if intersects is not None:
            body = {"intersects": intersects, **{k: v for k, v in params.items() if v}}
            return self.call("POST", "/results/aggregate", json_object, json=body)
        return self.get("/results/aggregate", json_object, bbox=_bbox(bbox), **params)

    # -- models -------------------------------------------------------------------------------
    def models(self) -> Models:
        """The deployed model and the deployment history (newest first)."""
        return self.get("/models", Models.model_validate)

    # -- OGC API - Processes ------------------------------------------------------------------
    def processes(self) -> ProcessList:
        return self.get("/processes", ProcessList.model_validate)

    def execute(self, inputs: dict[str, Any], *, process: str = PROCESS) -> Job:
        """Start a job (``Prefer: respond-async``): e.g. ``{"scene": <item href, or the item>,
        "model": "models:/<name>/<version>"}``. Needs the API key."""
        return self.call(
            "POST",
            api_path("processes", process, "execution"),
            Job.model_validate,
            json={"inputs": inputs},
            headers={"Prefer": "respond-async"},
        )

    def job(self, job_id: str) -> Job:
        return self.get(api_path("jobs", job_id), Job.model_validate)

    def wait(self, job_id: str, *, timeout: float = 600, poll: float = 0.5) -> Job:
        """Poll a job until it is done; ApiError (code ``job_failed``) if it did not succeed."""
        deadline = time.monotonic() + timeout
        url = self.absolute(api_path("jobs", job_id))
        while True:
            job = self.job(job_id)
            if job.done:
                if job.status != "successful":
                    raise ApiError(200, "job_failed", f"{job.status}: {job.message}", url)
                return job
            if time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"still {job.status} after {timeout:.0f} s", url)
            time.sleep(poll)

    def job_result(self, job_id: str) -> ResultSummary:
        """A successful job's result (the map it made)."""
        return self.get(
            api_path("jobs", job_id, "results"),
            lambda body: ResultSummary.model_validate(json_object(body)["result"]),
        )
