"""Run by every sandboxed grading kernel at start (``IPKernelApp.exec_files``), before any student code.

Fork bombs. A process forked by student code is a copy of the kernel, sharing its ZeroMQ
sockets; a fork bomb's copies would finish the cell and send their own replies over those
sockets, and the grader would not hear the real kernel's. So, with ``os.register_at_fork``
(which cannot be undone):

- a forked copy exits as soon as it finishes a cell, before it replies (a child that ends by
  itself, as ``multiprocessing``'s fork workers and ``fork`` + ``exec`` do, is unaffected);
- the kernel interrupts the cell that forks more than ``max_forks`` times (a cell that loops on
  ``fork`` while its children die would otherwise run until its timeout): the cell ends with
  ``KeyboardInterrupt``, and the sandbox's process limit (RLIMIT_NPROC) bounds what runs meanwhile;
- a forked copy whose cell fails exits at once, without formatting a traceback nobody will read;
- after a cell that forked, the kernel waits (at most ``settle_seconds``) while the other processes
  of its sandbox are still going away and reaps its own exited children; if copies of itself are
  still running then, it kills every other process of its sandbox. A fork bomb's copies go on
  forking among themselves after the kernel's cell has ended, a copy may hang on a lock another
  kernel thread held at the fork, and the process limit counts every one of them: the next cell
  could otherwise not even start a thread. A process count that stays a second without change
  ends the wait, so a worker pool forked by a cell does not outlive that cell: start and close it
  in one cell (``with multiprocessing.Pool() as pool: ...``).
"""


def _llm_course_sandbox_startup(max_forks=500, settle_seconds=5.0, steady_seconds=1.0):
    import os
    import signal
    import sys
    import time

    shell = get_ipython()  # noqa: F821 - the kernel's IPython shell
    kernel_pid, forks = os.getpid(), [0]

    def exit_after_cell(*_):
        os._exit(0)

    def in_child():
        shell.events.register("post_run_cell", exit_after_cell)
        shell.showtraceback = shell.showsyntaxerror = lambda *_, **__: os._exit(1)

    with open("/proc/self/cmdline", "rb") as f:
        kernel_cmdline = f.read()

    def others():
        """(live processes, of them copies of the kernel) in the sandbox, whose /proc shows only its own,
        after reaping the kernel's exited children."""
        alive = copies = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, kernel_pid):
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                if state == "Z":
                    if int(ppid) == kernel_pid:
                        os.waitpid(int(name), os.WNOHANG)
                    continue
                alive += 1
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    copies += f.read() == kernel_cmdline
            except (OSError, ValueError):
                continue  # gone meanwhile
        return alive, copies

    def settle(*_):
        if os.getpid() != kernel_pid or not forks[0]:
            return
        start = changed = time.monotonic()
        last, copies = others()
        try:
            while last and time.monotonic() - start < settle_seconds and time.monotonic() - changed < steady_seconds:
                time.sleep(0.05)
                now, copies = others()
                if now < last:
                    changed = time.monotonic()
                last = now
        except KeyboardInterrupt:  # the grader's timeout interrupted the wait: still clean up
            copies = others()[1]
        if copies:
            # One signal to every process of the sandbox but PID 1 and the kernel itself; Linux sends it
            # while holding the task list, so a copy cannot fork a new one meanwhile (killing them
            # one by one could not catch up with copies that go on forking).
            os.kill(-1, signal.SIGKILL)
            deadline = time.monotonic() + settle_seconds
            while others()[0] and time.monotonic() < deadline:
                time.sleep(0.05)

    def in_kernel():
        if os.getpid() != kernel_pid:
            return
        forks[0] += 1
        if forks[0] == max_forks:
            print(f"sandbox: this cell forked {max_forks} processes; it is interrupted", file=sys.stderr)
            os.kill(kernel_pid, signal.SIGINT)

    def new_cell(*_):
        forks[0] = 0

    shell.events.register("pre_run_cell", new_cell)
    shell.events.register("post_run_cell", settle)
    os.register_at_fork(after_in_child=in_child, after_in_parent=in_kernel)


_llm_course_sandbox_startup()
del _llm_course_sandbox_startup
