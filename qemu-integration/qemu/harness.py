"""Small helpers the Python test and bench drivers share (qemu_migration.py,
bench/e2e/compare_postcopy.py, bench/warmup/compare_qemu_warmup.py,
tests/libvirt/libvirt_migration_test.py)."""
import os
import socket
import subprocess
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


def _recv_exact(s, n, what):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise RuntimeError('faultline closed the hand-off connection %s' % what)
        data += chunk
    return data


def pager_connection(path, vmm, timeout=30):
    """A connection to faultline's hand-off socket for a QEMU that will get it with getfd.

    Sends the version 2 `attach` and waits for `attached`: faultline then waits up to an hour
    for the hello QEMU sends at post-copy ADVISE (without it, 5 s from connect).
    """
    import json
    import struct
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    body = json.dumps({'type': 'attach', 'version': 2, 'vmm': vmm}).encode()
    s.sendall(struct.pack('<I', len(body)) + body)
    n = struct.unpack('<I', _recv_exact(s, 4, 'after attach'))[0]
    reply = json.loads(_recv_exact(s, n, 'after attach'))
    if reply.get('type') != 'attached':
        raise RuntimeError('faultline answered attach with %s' % reply)
    s.settimeout(None)
    return s


def _give_connection(qmp, c):
    """Passes connection `c` to QEMU with getfd and names it in x-postcopy-external-pager-fd;
    closes our copy."""
    try:
        qmp.getfd('pager', c.fileno())
    finally:
        c.close()
    qmp.ok('migrate-set-parameters', **{'x-postcopy-external-pager-fd': 'pager'})


def give_pager(qmp, path, vmm):
    """The QEMU 10.2 series' destination gets its pager: a connection to faultline's socket
    (attached), passed with getfd, named in the x-postcopy-external-pager-fd parameter."""
    _give_connection(qmp, pager_connection(path, vmm))


def give_dirty_log(qmp, path):
    """Warm-up (the 10.2 series' patch 7): the source QEMU gets its connection to faultline
    source's --vmm_dirty_socket, passed the same way as the destination's pager connection."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    _give_connection(qmp, c)


def stop_processes(procs, timeout=15):
    """Terminates every process of (name, Popen) `procs` still running, newest first; kills
    one that does not exit within `timeout` seconds."""
    for _, p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def remove_files(*paths):
    for f in paths:
        if os.path.exists(f):
            os.unlink(f)
