"""OGC API - Processes jobs: their records in the results index, and the bounded pool that runs
them.

A job is a row of the ``jobs`` table (``tables.jobs_table``, in the database of the result
items), so jobs outlive the process. Statuses follow the standard: accepted, running,
successful, failed, dismissed. Jobs run in their own :class:`JobRunner` threads
(``INFERENCE_JOBS_WORKERS``), never in the threads that answer live requests, with at most
``INFERENCE_JOBS_MAX_PENDING`` waiting; more are refused.

A restart cannot resume a job's half-written scene, so jobs left accepted or running by a
stopped process are marked **failed**, with a message that says so, and the client submits them
again (classification is idempotent per scene and model version). Runners share the table
(replicas, one results index): each touches its unfinished jobs every heartbeat
(``INFERENCE_JOBS_HEARTBEAT_SECONDS``), and any runner fails the jobs nobody touched for three
heartbeats, at its start and at every beat.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eostream.inference import metrics
from eostream.inference.errors import InferenceError
from eostream.inference.tables import create_tables, jobs_table
from eostream.shared.errors import EostreamError, RetryableError

log = logging.getLogger(__name__)

ACCEPTED, RUNNING, SUCCESSFUL, FAILED, DISMISSED = (
    "accepted",
    "running",
    "successful",
    "failed",
    "dismissed",
)
STATUSES = (ACCEPTED, RUNNING, SUCCESSFUL, FAILED, DISMISSED)
UNFINISHED = (ACCEPTED, RUNNING)
RESTARTED = "the process running this job stopped before it finished; submit it again"


class JobsBusyError(InferenceError, RetryableError):
    """Too many jobs wait already; try again later (503)."""

    code = "busy"


@dataclass(frozen=True)
class Job:
    id: str
    process_id: str
    status: str
    message: str
    progress: int
    created: datetime
    started: datetime | None
    finished: datetime | None
    updated: datetime
    inputs: dict[str, Any]
    model_name: str | None
    model_version: str | None
    result: dict[str, Any] | None
    error_code: str | None


def _utc(value: datetime | None) -> datetime | None:
    """A time as UTC (a naive one is taken as UTC), as the jobs table holds and compares it."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _job(row: Any) -> Job:
    return Job(
        id=row["id"],
        process_id=row["process_id"],
        status=row["status"],
        message=row["message"] or "",
        progress=int(row["progress"] or 0),
        created=_utc(row["created"]) or datetime.now(UTC),
        started=_utc(row["started"]),
        finished=_utc(row["finished"]),
        updated=_utc(row["updated"]) or datetime.now(UTC),
        inputs=json.loads(row["inputs"]),
        model_name=row["model_name"],
        model_version=row["model_version"],
        result=json.loads(row["result"]) if row["result"] else None,
        error_code=row["error_code"],
    )


class JobStore:
    """The jobs table, over the results index's engine (sqlite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        create_tables(engine, jobs_table)

    def create(self, process_id: str, inputs: dict[str, Any], model: tuple[str, str] | None) -> Job:
        now = datetime.now(UTC)
        job_id = uuid.uuid4().hex
        row = {
            "id": job_id,
            "process_id": process_id,
            "status": ACCEPTED,
            "message": "accepted; waiting for a worker",
            "progress": 0,
            "created": now,
            "updated": now,
            "inputs": json.dumps(inputs),
            "model_name": model[0] if model else None,
            "model_version": model[1] if model else None,
        }
        with self._engine.begin() as conn:
            conn.execute(jobs_table.insert(), [row])
        return self.must(job_id)

    def must(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished from the jobs table")
        return job

    def get(self, job_id: str) -> Job | None:
        stmt = sa.select(jobs_table).where(jobs_table.c.id == job_id)
        with self._engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _job(row) if row is not None else None

    def update(self, job_id: str, *, unless: tuple[str, ...] = (), **fields: Any) -> bool:
        """Change a job unless its status is one of ``unless`` (a dismissed job stays so)."""
        fields["updated"] = datetime.now(UTC)
        for key in ("result", "inputs"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        stmt = jobs_table.update().where(jobs_table.c.id == job_id)
        if unless:
            stmt = stmt.where(jobs_table.c.status.not_in(unless))
        with self._engine.begin() as conn:
            return bool(conn.execute(stmt.values(**fields)).rowcount)

    def page(
        self,
        *,
        limit: int = 10,
        offset: int = 0,
        status: list[str] | None = None,
        process_id: list[str] | None = None,
        created: tuple[datetime | None, datetime | None] = (None, None),
        duration: tuple[float | None, float | None] = (None, None),
    ) -> tuple[list[Job], int]:
        """Jobs, newest first, and how many match. ``created`` bounds when a job was created
        (inclusive; None is open); ``duration`` bounds, in seconds, how long a job has run:
        finished - started, or now - started while it runs (a job not started has no duration
        and never matches a duration bound)."""
        where: list[sa.ColumnElement[bool]] = []
        if status:
            where.append(jobs_table.c.status.in_(status))
        if process_id:
            where.append(jobs_table.c.process_id.in_(process_id))
        # in UTC: sqlite keeps a time's wall-clock fields and drops its offset, and the table
        # holds UTC, so 12:30+02:00 must be compared as 10:30 (PostgreSQL would do it anyway)
        low_created, high_created = _utc(created[0]), _utc(created[1])
        if low_created is not None:
            where.append(jobs_table.c.created >= low_created)
        if high_created is not None:
            where.append(jobs_table.c.created <= high_created)
        stmt = (
            sa.select(jobs_table)
            .where(*where)
            .order_by(jobs_table.c.created.desc(), jobs_table.c.id)
        )
        if duration == (None, None):
            count = sa.select(sa.func.count()).select_from(jobs_table).where(*where)
            with self._engine.connect() as conn:
                rows = conn.execute(stmt.limit(limit).offset(offset)).mappings().all()
                total = int(conn.execute(count).scalar_one())
            return [_job(r) for r in rows], total
        # Durations differ by dialect in SQL (sqlite keeps text); the job list is small enough
        # to bound in Python, then page.
        with self._engine.connect() as conn:
            matching = [_job(r) for r in conn.execute(stmt).mappings().all()]
        now = datetime.now(UTC)
        low, high = duration
        kept = []
        for job in matching:
            if job.started is None:
                continue
            took = ((job.finished or now) - job.started).total_seconds()
            if (low is None or took >= low) and (high is None or took <= high):
                kept.append(job)
        return kept[offset : offset + limit], len(kept)

    def fail_unfinished(self, older_than: datetime, message: str = RESTARTED) -> int:
        """Mark failed every accepted or running job not touched since ``older_than``: no live
        runner holds it (runners touch theirs every heartbeat). How many there were."""
        now = datetime.now(UTC)
        stmt = (
            jobs_table.update()
            .where(jobs_table.c.status.in_(UNFINISHED), jobs_table.c.updated < _utc(older_than))
            .values(
                status=FAILED, message=message, finished=now, updated=now, error_code="restarted"
            )
        )
        with self._engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def touch(self, job_ids: list[str]) -> None:
        """This runner still holds these jobs (its heartbeat)."""
        if not job_ids:
            return
        stmt = (
            jobs_table.update()
            .where(jobs_table.c.id.in_(job_ids), jobs_table.c.status.in_(UNFINISHED))
            .values(updated=datetime.now(UTC))
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)


class Progress:
    """What a running job reports: a percentage and a line of text."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id

    def __call__(self, percent: int, message: str) -> None:
        self._store.update(
            self._job_id, unless=(DISMISSED,), progress=max(0, min(100, percent)), message=message
        )


#: A job's work: given its progress reporter, the result document (``{"result": ...}``).
Work = Callable[[Progress], dict[str, Any]]


class JobRunner:
    """Runs jobs in ``workers`` threads of its own, with at most ``max_pending`` waiting."""

    def __init__(
        self, store: JobStore, *, workers: int, max_pending: int, heartbeat: float = 10.0
    ) -> None:
        self.store = store
        self.workers = workers
        self.max_pending = max_pending
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._futures: dict[str, Future[None]] = {}
        self._held: set[str] = set()  # unfinished jobs of this runner, sync ones included
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._beat: threading.Thread | None = None

    def start(self) -> int:
        """Open the pool and start the heartbeat; jobs no live runner holds (left by a stopped
        process, here or on another replica) are marked failed, now and at every beat."""
        failed = self.sweep()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eostream-job")
        self._stopping.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="eostream-jobs", daemon=True)
        self._beat.start()
        return failed

    def sweep(self) -> int:
        """Fail the jobs whose runner has not touched them for three heartbeats."""
        stale = datetime.now(UTC) - timedelta(seconds=3 * self.heartbeat)
        failed = self.store.fail_unfinished(stale)
        if failed:
            log.warning("%d unfinished job(s) lost their runner; marked failed", failed)
            metrics.JOBS.labels("lost").inc(failed)
        return failed

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.heartbeat):
            try:
                with self._lock:
                    held = sorted(self._held)
                self.store.touch(held)
                self.sweep()
            except Exception:  # the database may be away for a moment; try at the next beat
                log.exception("jobs heartbeat failed")

    def stop(self) -> None:
        """Stop taking jobs; waiting jobs are cancelled (the next sweep marks them failed), a
        running one finishes in the background."""
        self._stopping.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, job: Job, work: Work) -> None:
        with self._lock:
            if self._pool is None:  # an app run without its lifespan (tests): open it now
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eostream-job")
            if self._pending >= self.max_pending:
                raise JobsBusyError(
                    f"{self._pending} jobs wait already (INFERENCE_JOBS_MAX_PENDING); "
                    "try again later"
                )
            self._pending += 1
            metrics.JOBS_PENDING.set(self._pending)
            self._held.add(job.id)
            self._futures[job.id] = self._pool.submit(self._run, job.id, work)

    def run_now(self, job: Job, work: Work) -> Job:
        """Run a job in the calling thread (synchronous execution); the finished job. Its error,
        if any, is recorded and raised again (the caller answers it)."""
        with self._lock:
            self._held.add(job.id)
        try:
            self._execute(job.id, work, reraise=True)
        finally:
            with self._lock:
                self._held.discard(job.id)
        return self.store.must(job.id)

    def dismiss(self, job_id: str) -> Job | None:
        """Dismiss a job: a waiting one never runs; a running one's scene finishes but the
        job stays dismissed. None when there is no such job."""
        job = self.store.get(job_id)
        if job is None:
            return None
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None and future.cancel():
            self._done(job_id)
        now = datetime.now(UTC)
        said = "dismissed by the client"
        # an unfinished job's dismissal is its outcome, counted once (a job that finished
        # meanwhile, or a second DELETE, was counted already)
        if self.store.update(
            job_id,
            unless=(SUCCESSFUL, FAILED, DISMISSED),
            status=DISMISSED,
            message=said,
            finished=now,
        ):
            metrics.JOBS.labels("dismissed").inc()
        else:
            self.store.update(job_id, status=DISMISSED, message=said, finished=job.finished or now)
        return self.store.get(job_id)

    def _done(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)
            if self._futures.pop(job_id, None) is not None:
                self._pending = max(0, self._pending - 1)
                metrics.JOBS_PENDING.set(self._pending)

    def _run(self, job_id: str, work: Work) -> None:
        try:
            self._execute(job_id, work)
        finally:
            self._done(job_id)

    def _execute(self, job_id: str, work: Work, *, reraise: bool = False) -> None:
        now = datetime.now(UTC)
        if not self.store.update(
            job_id,
            unless=(DISMISSED,),
            status=RUNNING,
            started=now,
            progress=1,
            message="running",
        ):
            return  # dismissed while waiting
        try:
            result = work(Progress(self.store, job_id))
        except EostreamError as exc:
            log.info("job %s failed: %s", job_id, exc)
            code = getattr(exc, "code", "error")
            self._finish(job_id, FAILED, str(exc), "failed", error_code=code)
            if reraise:
                raise
            return
        except Exception:
            log.exception("job %s failed unexpectedly", job_id)
            self._finish(job_id, FAILED, "internal error", "error", error_code="internal")
            if reraise:
                raise
            return
        self._finish(job_id, SUCCESSFUL, "done", "successful", result=result, progress=100)

    def _finish(self, job_id: str, status: str, message: str, outcome: str, **fields: Any) -> None:
        """Record the job's end, counted as ``outcome`` (a job dismissed meanwhile stays so, and
        was counted then)."""
        if self.store.update(
            job_id,
            unless=(DISMISSED,),
            status=status,
            message=message[:2000],
            finished=datetime.now(UTC),
            **fields,
        ):
            metrics.JOBS.labels(outcome).inc()
