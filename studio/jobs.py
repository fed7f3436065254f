"""Per-session running jobs, so a Cancel button stops its own session's run (inside the step callback).

By default the board lives in memory. On ZeroGPU a run happens in a forked worker while Cancel is handled by the
main process, so a `shared` board keeps its state in files instead, in a private folder made before any fork:
`<key>.run` while a session's job runs, `<key>.cancel` once Cancel was pressed. The key is a hash of the session
id, never the id itself, so no client string becomes a path.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from studio.engine.contract import Job


class FileFlag:
    """A cancel flag visible across processes (the part of `threading.Event` that jobs use)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class JobBoard:
    def __init__(self, shared: bool = False) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.folder: Path | None = None
        if shared:
            self.folder = Path(tempfile.mkdtemp(prefix="atelier-jobs-"))
            weakref.finalize(self, shutil.rmtree, self.folder, True)

    def start(self, session: str) -> Job:
        job = Job()
        if self.folder is not None:
            flag = FileFlag(self._path(session, "cancel"))
            flag.clear()  # a Cancel pressed before this run started is not for it
            job.cancel = flag
            self._path(session, "run").touch()
        with self._lock:
            self._jobs[session] = job
        return job

    def cancel(self, session: str) -> bool:
        """Ask the session's running job to stop; False when it has none."""
        if self.folder is not None:
            if not self._path(session, "run").exists():
                return False
            FileFlag(self._path(session, "cancel")).set()
            return True
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
                if self.folder is not None:
                    self._path(session, "run").unlink(missing_ok=True)
                    self._path(session, "cancel").unlink(missing_ok=True)

    def _path(self, session: str, kind: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{hashlib.sha256(session.encode()).hexdigest()[:32]}.{kind}"
