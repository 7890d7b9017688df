"""Run by every sandboxed grading kernel at start (``IPKernelApp.exec_files``), before any student code.

Fork bombs. A process forked by student code is a copy of the kernel, sharing its ZeroMQ
sockets; a fork bomb's copies would finish the cell and send their own replies over those
sockets, and the grader would not hear the real kernel's. So, with ``os.register_at_fork``
(which cannot be undone):

- a forked copy exits as soon as it finishes a cell, before it replies (a child that ends by
  itself, as ``multiprocessing``'s fork workers and ``fork`` + ``exec`` do, is unaffected);
- the kernel interrupts the cell that forks more than ``MAX_FORKS`` times (a cell that loops on
  ``fork`` while its children die would otherwise run until its timeout): the cell ends with
  ``KeyboardInterrupt``, and the sandbox's process limit (RLIMIT_NPROC) bounds what runs meanwhile.
"""


def _llm_course_sandbox_startup(max_forks=500):
    import os
    import signal
    import sys

    shell = get_ipython()  # noqa: F821 - the kernel's IPython shell
    kernel_pid, forks = os.getpid(), [0]

    def exit_after_cell(*_):
        os._exit(0)

    def in_child():
        shell.events.register("post_run_cell", exit_after_cell)

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
    os.register_at_fork(after_in_child=in_child, after_in_parent=in_kernel)


_llm_course_sandbox_startup()
del _llm_course_sandbox_startup
