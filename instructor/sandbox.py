"""The sandboxed grading kernel: nbgrader's autograde runs student code through this kernel manager.

``nbgrader_config.py`` sets ``c.RobustExecute.kernel_manager_class`` to
:class:`SandboxKernelManager` (autograding only: ``nbgrader validate`` and the book use ordinary
kernels). Each grading kernel then runs

- as an unprivileged user (``nobody`` by default), whatever user runs the grader;
- in its own network namespace: no interface but a loopback that is down, so no address is
  reachable. The grader cannot reach a TCP port inside that namespace either, so the kernel and
  the grader talk over unix sockets (ZeroMQ's ``ipc`` transport) in a private connection folder
  that belongs to the kernel's user: unix sockets are files, shared across network namespaces;
- in its own PID namespace (it sees and can signal only its own processes; all of them are
  killed when the kernel stops) and mount namespace: the course folder is read-only to it,
  ``gradebook.db``, ``solutions/`` and the other submissions are hidden, ``/tmp`` is private,
  and only the notebook's working folder is writable (it belongs to the kernel's user while
  the kernel runs, and to its owner again afterwards);
- under hard resource limits set before the kernel starts (address space, CPU seconds,
  processes, file size): soft = hard, so the submission cannot raise them.

``instructor/sandbox_launch.py`` does the namespace side. All this needs root (the grader drops
to the kernel user) and ``unshare`` (util-linux): without them :func:`check_available` raises
:class:`SandboxUnavailable`, which says why and how to grade without the sandbox
(``--SandboxKernelManager.enabled=False``, or ``python -m instructor autograde --no-sandbox``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, Integer, List, Unicode

LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
STARTUP = Path(__file__).with_name("sandbox_startup.py")  # run by the kernel before any student code
#: Environment variables the kernel keeps; everything else (tokens, credentials) is dropped.
#: Not JPY_PARENT_PID: the kernel's parent is the namespace's PID 1, and `unshare --kill-child`
#: already ends the namespace when the grader's child process dies.
KEPT_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "PYTHONHASHSEED",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "JPY_SESSION_NAME",
            "PYDEVD_DISABLE_FILE_VALIDATION")


class SandboxUnavailable(RuntimeError):
    """This machine (or this user) cannot start the sandboxed grading kernel."""


HOW_TO_DISABLE = (
    "Grade as root on Linux with util-linux's `unshare`, or grade without the sandbox (student code then runs "
    "as you, with the network): `nbgrader autograde ... --SandboxKernelManager.enabled=False`, "
    "`python -m instructor autograde ... --no-sandbox`, or c.SandboxKernelManager.enabled = False in nbgrader_config.py."
)


@lru_cache(maxsize=None)
def check_available(user: str = "nobody") -> tuple[int, int]:
    """(uid, gid) of the kernel user, once this machine is known to provide the sandbox; else raise."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the grading sandbox needs Linux namespaces (this is {sys.platform}). {HOW_TO_DISABLE}")
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            f"the grading sandbox must be started by root, to run student code as the user {user!r} "
            f"(the grader runs as uid {os.geteuid()}). {HOW_TO_DISABLE}"
        )
    if shutil.which("unshare") is None:
        raise SandboxUnavailable(f"the grading sandbox needs the `unshare` command (util-linux). {HOW_TO_DISABLE}")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SandboxUnavailable(f"the grading sandbox's user {user!r} does not exist on this machine. {HOW_TO_DISABLE}") from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"the grading sandbox's user {user!r} is root; choose an unprivileged one.")
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"this machine does not allow new mount/network/PID namespaces ({probe.stderr.strip()}). {HOW_TO_DISABLE}"
        )
    return entry.pw_uid, entry.pw_gid


def _package_folders() -> list[str]:
    """Where `llm_course` is imported from: an editable install (`pip install -e .`) finds it through an
    import hook, not through `sys.path`, and a course checked out below `/tmp` would otherwise be
    hidden by the kernel's private `/tmp` (only the package folder is shown, not the checkout)."""
    spec = importlib.util.find_spec("llm_course")
    return [p for p in (spec.submodule_search_locations or []) if os.path.isdir(p)] if spec else []


@lru_cache(maxsize=None)
def _warm_caches() -> tuple[str, ...]:
    """Once per grading process, as the grader: what sandboxed kernels cannot write for themselves.

    The course is read-only to the kernel, so Python could not save the byte code of ``llm_course``
    there: compile it here (only what changed). Each kernel has a fresh HOME, so matplotlib would
    rebuild its font list in every kernel: return the grader's font lists, to copy into each HOME.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("llm_course")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)
    try:
        import matplotlib

        return tuple(str(p) for p in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"))
    except Exception:  # noqa: BLE001 - no matplotlib, or no cache: the kernel builds its own
        return ()


class SandboxKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels run in the sandbox described in this module's docstring."""

    enabled = Bool(True, help="Run grading kernels in the sandbox; False starts ordinary kernels.").tag(config=True)
    user = Unicode("nobody", help="The unprivileged user that runs student code.").tag(config=True)
    address_space = Integer(
        6 * 2**30, help="Hard limit on the kernel's address space in bytes (RLIMIT_AS); 0 for none."
    ).tag(config=True)
    cpu_seconds = Integer(
        1800, help="Hard limit on the CPU seconds of one kernel (RLIMIT_CPU); past it the kernel is killed."
    ).tag(config=True)
    processes = Integer(
        1024, help="Hard limit on processes and threads of the kernel user (RLIMIT_NPROC), counted over all its "
        "kernels (parallel graders, torch threads): stops fork bombs."
    ).tag(config=True)
    file_size = Integer(256 * 2**20, help="Hard limit on the size of one file it writes, in bytes (RLIMIT_FSIZE).").tag(
        config=True
    )
    hidden = List(
        Unicode(),
        ["gradebook.db", "solutions", "submitted", "autograded", "feedback", "report", ".postgres"],
        help="Files and folders of the course hidden from the kernel (covered by empty ones).",
    ).tag(config=True)

    _rundir: str | None = None
    _workdir: tuple[str, int, int] | None = None  # (path, uid, gid) given to the kernel user

    async def _async_pre_start_kernel(self, **kw):
        if not self.enabled:
            return await super()._async_pre_start_kernel(**kw)
        uid, gid = check_available(self.user)
        if self._rundir is None:  # kept across restarts: the connection file lives there
            self._rundir = tempfile.mkdtemp(prefix="llm-course-kernel-")
            os.chown(self._rundir, uid, gid)
            os.chmod(self._rundir, 0o700)
        self.transport = "ipc"
        self.ip = os.path.join(self._rundir, "kernel")
        self.connection_file = os.path.join(self._rundir, "connection.json")
        cwd = os.path.realpath(kw.get("cwd") or os.getcwd())
        if self._workdir is None:
            st = os.stat(cwd)
            self._workdir = (cwd, st.st_uid, st.st_gid)
            os.chown(cwd, uid, gid)
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        os.chown(self.connection_file, uid, gid)
        env = {k: v for k, v in (kw.get("env") or os.environ).items() if k in KEPT_ENV or k.startswith("LLM_COURSE_")}
        home = os.path.join(self._rundir, "home")
        mpl = os.path.join(home, "mpl")
        os.makedirs(mpl, exist_ok=True)
        for fontlist in _warm_caches():
            shutil.copy(fontlist, mpl)
        for folder, _, files in os.walk(home):
            os.chown(folder, uid, gid)
            for name in files:
                os.chown(os.path.join(folder, name), uid, gid)
        env.update(HOME=home, USER=self.user, LOGNAME=self.user, TMPDIR="/tmp", MPLCONFIGDIR=mpl)
        kw["env"] = env
        spec = {
            "uid": uid,
            "gid": gid,
            "cwd": cwd,
            "rundir": self._rundir,
            "course": _course_root(cwd),
            "hidden": list(self.hidden),
            "reveal": [p for p in sys.path if p and os.path.isdir(p)] + _package_folders()
            + [sys.prefix, sys.base_prefix, str(STARTUP.parent)],
            "limits": {
                "address_space": self.address_space,
                "cpu_seconds": self.cpu_seconds,
                "processes": self.processes,
                "file_size": self.file_size,
            },
        }
        wrapped = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                   sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec), "--",
                   *kernel_cmd, f"--IPKernelApp.exec_files={STARTUP}"]
        return wrapped, kw

    async def _async_kill_kernel(self, restart: bool = False) -> None:
        self._kill_group()
        await super()._async_kill_kernel(restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        self._kill_group()
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            self._give_back_workdir()
            if self._rundir:
                shutil.rmtree(self._rundir, ignore_errors=True)
                self._rundir = None

    cleanup_resources = _async_cleanup_resources  # nbclient calls this name (the base binds its own method)

    def _kill_group(self) -> None:
        """Kill every process the kernel started in its process group (the namespace's PID 1 included)."""
        pgid = getattr(self.provisioner, "pgid", None) if self.enabled else None
        if pgid:
            try:
                os.killpg(pgid, 9)
            except (ProcessLookupError, PermissionError):
                pass

    def _give_back_workdir(self) -> None:
        """The working folder, and what the kernel wrote there, belong to their owner again."""
        if self._workdir is None:
            return
        path, uid, gid = self._workdir
        self._workdir = None
        if not os.path.isdir(path):
            return
        os.chown(path, uid, gid)
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(folder, name), uid, gid)


def _course_root(cwd: str) -> str:
    """The nearest folder above `cwd` that holds nbgrader_config.py ('' if none)."""
    for folder in [Path(cwd), *Path(cwd).parents]:
        if (folder / "nbgrader_config.py").exists():
            return str(folder)
    return ""
