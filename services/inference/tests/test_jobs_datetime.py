"""/jobs?datetime= compares instants, whatever the offset the client writes them with: the jobs
table holds UTC, and sqlite (the embedded index) keeps a time's wall-clock fields only."""

from __future__ import annotations

from datetime import timedelta, timezone

import httpx

from eostream.inference.jobs import JobStore
from eostream.inference.service import InferenceService

PLUS2 = timezone(timedelta(hours=2))


async def test_jobs_datetime_filter_with_an_offset(
    client: httpx.AsyncClient, service: InferenceService
) -> None:
    job = JobStore(service.results.engine).create("classify-scene", {"scene": "x"}, None)
    # a minute before and after the job was created, written as +02:00 (two hours "later")
    before = (job.created - timedelta(minutes=1)).astimezone(PLUS2).isoformat()
    after = (job.created + timedelta(minutes=1)).astimezone(PLUS2).isoformat()

    async def found(interval: str) -> list[str]:
        r = await client.get("/jobs", params={"datetime": interval})
        assert r.status_code == 200, r.text
        return [j["jobID"] for j in r.json()["jobs"]]

    assert await found(f"{before}/..") == [job.id]
    assert await found(f"{before}/{after}") == [job.id]
    assert await found(f"../{after}") == [job.id]
    assert await found(f"../{before}") == []
    assert await found(f"{after}/..") == []
