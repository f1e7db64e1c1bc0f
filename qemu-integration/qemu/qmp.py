"""A minimal QMP client (QEMU Machine Protocol over a Unix socket), shared by
qemu_migration.py and bench/e2e/compare_postcopy.py; EventQmp also keeps QEMU's events."""
import json
import socket
import threading
import time


class Qmp:
    """Connects (retrying until QEMU has made the socket), negotiates capabilities.

    cmd() returns QEMU's whole reply ({'return': ...} or {'error': ...}), skipping events;
    ok() returns the 'return' value or raises RuntimeError with QEMU's error text.
    Thread-safe: one command at a time (QEMU's QMP socket takes one client).
    """

    def __init__(self, path, timeout=30, reply_timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.s.settimeout(reply_timeout)  # a QEMU whose main loop is stuck must not hang us
        self.lock = threading.RLock()
        self.f = self.s.makefile('rw')
        json.loads(self.f.readline())  # greeting
        self.ok('qmp_capabilities')

    def cmd(self, name, **args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        with self.lock:
            self.f.write(json.dumps(msg) + '\n')
            self.f.flush()
            return self._reply(name)

    def getfd(self, fdname, fd):
        """Passes `fd` to QEMU under `fdname` (QMP getfd, the fd as SCM_RIGHTS)."""
        msg = json.dumps({'execute': 'getfd', 'arguments': {'fdname': fdname}}) + '\n'
        with self.lock:
            self.f.flush()
            socket.send_fds(self.s, [msg.encode()], [fd])
            return self._ok('getfd', self._reply('getfd'))

    def ok(self, name, **args):
        return self._ok(name, self.cmd(name, **args))

    def event(self, r):
        """Called with each event read while waiting for a reply; ignored here."""

    def _reply(self, name):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError('%s: QEMU closed the QMP connection' % name)
            r = json.loads(line)
            if 'event' in r:
                self.event(r)
                continue
            return r

    @staticmethod
    def _ok(name, r):
        if 'error' in r:
            raise RuntimeError('%s: %s' % (name, r['error']['desc']))
        return r['return']

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class EventQmp(Qmp):
    """Qmp that keeps every event with QEMU's own timestamp (wall clock, µs)."""

    def __init__(self, path, **kw):
        self.events = []
        super().__init__(path, **kw)

    def event(self, r):
        ts = r.get("timestamp") or {}
        self.events.append((r["event"], ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6,
                            r.get("data")))

    def first_event(self, name, after):
        return next((t for e, t, _ in self.events if e == name and t >= after), None)
