"""A throwaway PostgreSQL server for parallel grading (nbgrader's choice for concurrent access).

``LocalPostgres(folder)`` creates a database cluster in `folder` (``initdb``), starts
``postgres`` listening on a Unix socket in that folder only (no TCP port), creates
the database ``gradebook``, and stops the server on exit. Its ``url`` is the
SQLAlchemy URL for nbgrader's ``CourseDirectory.db_url``. Needs PostgreSQL's
server programs on PATH and ``psycopg2`` (``pip install psycopg2-binary``). As
root, the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class LocalPostgres:
    def __init__(self, folder: Path, keep: bool = False):
        if os.geteuid() == 0:
            # The server runs as `postgres`, which must reach its folder: a private temporary
            # folder of root's (mkdtemp's 0700) would stop it at the parent, so use its own.
            folder = tempfile.mkdtemp(prefix="llm-course-postgres-")
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"
        self.keep = keep
        self.url = f"postgresql+psycopg2://grader@/gradebook?host={self.folder}"

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def __enter__(self) -> LocalPostgres:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "grader", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run(
            "pg_ctl", "-D", str(self.data), "-w", "-l", str(self.folder / "server.log"), "start",
            "-o", f"-k {self.folder} -c listen_addresses='' -c fsync=off -c max_connections=100",
        )
        self._run("createdb", "-h", str(self.folder), "-U", "grader", "gradebook")
        return self

    def __exit__(self, *exc) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
