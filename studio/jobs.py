"""Per-session running jobs, so a Cancel button stops its own session's run (inside the step callback)."""

from __future__ import annotations

import threading

from studio.engine.common import Job


class JobBoard:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Job:
        job = Job()
        with self._lock:
            self._jobs[session] = job
        return job

    def cancel(self, session: str) -> bool:
        with self._lock:
            job = self._jobs.get(session)
        if job is None:
            return False
        job.cancel.set()
        return True

    def finish(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]
