"""Small helpers the Python test and bench drivers share (qemu_migration.py,
bench/e2e/compare_postcopy.py, tests/libvirt/libvirt_migration_test.py)."""
import socket
import time


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


def read(path):
    """A text file's contents, '' while it does not exist yet."""
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except FileNotFoundError:
        return ''


def wait_for(pred, timeout, what, interval=0.05):
    """pred()'s first truthy value; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError('timed out (%d s) waiting for %s' % (timeout, what))
