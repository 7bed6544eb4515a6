"""Reading special files in tests: fail, rather than hang, when a read blocks."""

import contextlib
import os
import threading


@contextlib.contextmanager
def no_hang(path, seconds=10):
    """Fail, rather than hang, when something blocks reading the named pipe ``path``.

    After ``seconds`` a writer opens the pipe and closes it at once, which ends any read blocked on it; the test
    then fails saying the read blocked.
    """
    done = threading.Event()
    blocked = []

    def release():
        if done.wait(seconds):
            return
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            blocked.append(True)
        except OSError:  # no reader waiting on the pipe
            pass

    watchdog = threading.Thread(target=release, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()
    assert not blocked, f"reading {path} blocked"
