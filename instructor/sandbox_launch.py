"""Start a grading kernel inside its sandbox (run by ``instructor.sandbox``; standard library only).

    unshare --mount --net --pid --fork --kill-child  python -I -S sandbox_launch.py SPEC -- KERNEL_CMD...

``unshare`` gives this process new mount, network and PID namespaces; it runs as root, as PID 1
of the new PID namespace, and prepares the kernel's view of the machine before dropping to the
sandbox user:

1. mounts, private to the namespace: a fresh ``/proc`` (only the sandbox's processes are
   visible), a private ``/tmp``, the course folder read-only with its grading files
   (``gradebook.db``, ``solutions/``, other submissions) covered by empty ones, the kernel's
   working folder writable again, and the folders the kernel needs (the interpreter, its
   packages, the working folder, the connection folder) reachable even where a parent folder
   is closed to other users (``/root`` holding a pyenv interpreter, a pytest temporary folder):
   such a parent is covered by an empty tmpfs and only the needed folders are mounted back;
2. forks the kernel: hard resource limits (soft = hard, so the kernel cannot raise them), no
   supplementary groups, the sandbox user's gid and uid, ``no_new_privs``, then ``exec``;
3. stays as PID 1: reaps every orphan (a fork bomb's children) and exits with the kernel's
   status. When PID 1 exits, the kernel of the OS kills whatever is left in the namespace.

The network namespace has no interface but a loopback that is down: no address outside is
reachable. The grader talks to the kernel over unix sockets (ZeroMQ's ``ipc`` transport) in the
connection folder, which works across network namespaces, where TCP on localhost would not.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import tempfile

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
LIMITS = {"address_space": resource.RLIMIT_AS, "cpu_seconds": resource.RLIMIT_CPU,
          "processes": resource.RLIMIT_NPROC, "file_size": resource.RLIMIT_FSIZE}

libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind(path: str, target: str, readonly: bool = False) -> None:
    """Mount `path` on `target`, read-only or writable (a bind keeps the flags of its source: set them)."""
    mount(path, target, None, MS_BIND | MS_REC)
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0))


def cover(folder: str, keep: list[str], mode: int = 0o755) -> None:
    """Mount an empty tmpfs over `folder`, then mount the files and folders in `keep` (below it) back."""
    staged = []
    for path in keep:  # bind each kept path somewhere outside before `folder` is covered
        where = "/dev/shm" if below(folder, "/tmp") else "/tmp"
        stage = tempfile.mkdtemp(dir=where) if os.path.isdir(path) else tempfile.mkstemp(dir=where)[1]
        mount(path, stage, None, MS_BIND | MS_REC)
        staged.append((path, stage))
    mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o},size=64m")
    for path, stage in staged:
        if os.path.isdir(stage):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        mount(stage, path, None, MS_MOVE)
        os.rmdir(stage) if os.path.isdir(stage) else os.unlink(stage)


def closed_ancestor(path: str) -> str | None:
    """The highest folder above `path` that other users cannot enter (no o+x), if any."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def outermost(paths: list[str]) -> list[str]:
    """The paths not below another one of them (mounting those back brings the rest along)."""
    paths = sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)})
    return [p for p in paths if not any(p.startswith(q + os.sep) for q in paths)]


def below(path: str, folder: str) -> bool:
    return (path + os.sep).startswith(folder.rstrip(os.sep) + os.sep)


def prepare_mounts(spec: dict) -> None:
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    cwd, course, rundir = spec["cwd"], spec["course"], spec["rundir"]
    needed = outermost(spec["reveal"] + [course, cwd, rundir])
    # A private /tmp that keeps what the kernel needs from it (the connection folder, a course there).
    cover("/tmp", [p for p in needed if below(p, "/tmp")], mode=0o1777)
    # The course read-only, its grading files hidden, the working folder writable.
    if course:
        bind(course, course, readonly=True)
        if not os.stat(course).st_mode & 0o001:  # a course folder closed to others: an open one, same content
            cover(course, [os.path.join(course, name) for name in os.listdir(course)])
        for name in spec["hidden"]:
            path = os.path.join(course, name)
            if os.path.isdir(path):
                cover(path, [cwd] if cwd and below(cwd, path) else [], mode=0o555)
            elif os.path.exists(path):  # an empty, read-only file of root instead: reads and writes fail
                empty = tempfile.mkstemp(dir=spec["rundir"])[1]
                bind(empty, path, readonly=True)
    if cwd:
        bind(cwd, cwd)
    # Folders the kernel needs, below folders closed to other users (e.g. /root).
    closed: dict[str, list[str]] = {}
    for path in needed:
        top = closed_ancestor(path)
        if top:
            closed.setdefault(top, []).append(path)
    for top, paths in closed.items():
        cover(top, paths)


def start_kernel(spec: dict, cmd: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            for name, limit in spec["limits"].items():
                if limit > 0:
                    resource.setrlimit(LIMITS[name], (limit, limit))
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            os.chdir(spec["cwd"] or spec["rundir"])
            # ipykernel would stop when its parent is not the grader's process: here the parent is
            # PID 1 of the namespace, which ends with the grader's `unshare` (--kill-child).
            os.environ["JPY_PARENT_PID"] = "1"  # ipykernel: no parent poller
            os.execvp(cmd[0], cmd)
        except BaseException as err:  # noqa: BLE001 - report why, then leave without Python's cleanup
            print(f"sandbox: cannot start the kernel: {err}", file=sys.stderr, flush=True)
        os._exit(127)
    # The grader interrupts the kernel with SIGINT to its process group, which includes this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:  # PID 1: reap every process, until the kernel itself exits
        try:
            done, status = os.wait()
        except ChildProcessError:
            return 1
        if done == pid:
            return os.waitstatus_to_exitcode(status) & 0xFF


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: sandbox_launch.py SPEC_JSON -- KERNEL_CMD...", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    try:
        prepare_mounts(spec)
    except OSError as err:
        print(f"sandbox: cannot prepare the kernel's file system: {err}", file=sys.stderr, flush=True)
        return 126
    return start_kernel(spec, argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
