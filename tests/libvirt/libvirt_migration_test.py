#!/usr/bin/env python3
"""`faultline migrate` against two real libvirtd daemons on this machine, page for page verified.

Two private libvirtd instances (libvirtd_instance.sh: own mount namespace, own host UUID) stand
in for two hosts. The domain runs the faultline guest (qemu-integration/guest) on KVM, its RAM a
shared memfd, the emulator QEMU with faultline's series. Cases (each prints PASS/FAIL and why):

  pager          post-copy through faultline: `faultline source` serves the source QEMU's memfd,
                 `faultline serve` waits on the pager socket, `faultline migrate` drives libvirt
                 (passthrough caps on the source, -global on the destination, StartPostCopy,
                 events, job stats). Then every guest data page on the destination equals the
                 source's, the guest's own check reports bad=0, and it kept running there.
  plain          the same domain back with QEMU's own post-copy (--pager=false), verified alike.
  no-pager       nobody listens on the pager socket: the migration fails with the pager named,
                 and the domain keeps running on the source (nothing lost).
  anon-ram       a domain with anonymous RAM: refused before anything moves, the XML to add
                 in the message, the domain still running.
  stock-qemu     a domain on Debian's QEMU: refused (no x-postcopy-external-pager), still running.
  no-domain      an unknown domain: a clear error.
  no-uffd-access (QEMU unprivileged only) /dev/userfaultfd not open to QEMU's user: the
                 destination QEMU cannot make a userfaultfd at ADVISE, the migration fails in
                 pre-copy with the reason, the domain keeps running on the source.
  warmup         (--qemu_version=10.2 or 11.1) `pager` with warm-up: the source QEMU reports its
                 guest's writes to `faultline source`, `faultline serve --warmup` pulls RAM during
                 pre-copy, post-copy fetches the rest; verified alike, and the warm-up's rounds
                 and switch checked in faultline's figures.
  migrate-compat (--qemu_version=11.1) whether this libvirt can migrate a QEMU 11 domain at
                 all: libvirt 9.0 (Debian 12's) cannot (it passes `detach` to `migrate`, which
                 QEMU 11.0 removed); `faultline migrate` refuses up front with the cause, the
                 domain still running. The migrating cases are then skipped with that reason.
  warmup-refused (the 7.2 series) warm-up asked of a QEMU that cannot report its guest's
                 writes: refused before anything moves, the domain still running.

QEMU runs as --qemu_user (default libvirt-qemu, as Debian's libvirt runs it): its binary and
the guest are copied where that user can read them, /dev/kvm and /dev/userfaultfd are opened to
its group for the run (and restored), vm.unprivileged_userfaultfd stays 0 — so both QEMU's own
post-copy and the pager's userfaultfd must come from /dev/userfaultfd — and `faultline serve`
lets that uid hand over (--allow_uids).

Usage: libvirt_migration_test.py --faultline BIN --guest ELF --qemu PATCHED_QEMU [--workdir DIR]
       [--qemu_version 7.2|10.2|11.1] [--size_mib 256] [--cases pager,plain,...]
libvirt 9.0 drives QEMU 10.2 and 11.1 as well: the domain XML has <acpi/> (without it libvirt
9.0 passes -no-acpi, which QEMU 10.2 and later no longer have).
Exit 0 when every case passed; the last line is "libvirt tests: P passed, F failed".
"""
import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'qemu-integration', 'qemu'))
from harness import free_port, read, wait_for  # noqa: E402
PAGE = 4096
MAILBOX_GPA = 0x5000
NAME = 'flt-guest'


class Daemon:
    """One private libvirtd (a "host")."""

    def __init__(self, work, tag, qemu_user):
        self.dir = os.path.join(work, 'libvirt-' + tag)
        self.uri = 'qemu+unix:///system?socket=%s/sock/libvirt-sock' % self.dir
        subprocess.run([os.path.join(HERE, 'libvirtd_instance.sh'), 'start', self.dir,
                        str(uuid.uuid4()), qemu_user], check=True)

    def stop(self):
        subprocess.run([os.path.join(HERE, 'libvirtd_instance.sh'), 'stop', self.dir])

    def virsh(self, *args, check=True):
        r = subprocess.run(['virsh', '-c', self.uri] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError('virsh %s: %s' % (' '.join(args), r.stderr.strip()))
        return r

    def state(self, name=NAME):
        r = self.virsh('domstate', name, check=False)
        return r.stdout.strip() if r.returncode == 0 else 'absent'

    def qemu_pid(self, name=NAME):
        return int(read(os.path.join(self.dir, 'run', 'qemu', name + '.pid')).strip())


def memfd_path(pid):
    """/proc/PID/fd/N of the QEMU's guest RAM: its memfd, or its file in libvirt's
    memory_backing_dir (a tmpfs, libvirtd_instance.sh)."""
    fd_dir = '/proc/%d/fd' % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
            if 'memfd:memory-backend-memfd' in target or '/qemu/ram/' in target:
                return os.path.join(fd_dir, fd)
        except OSError:
            pass
    raise RuntimeError('QEMU %d has no guest RAM fd (memfd or memory_backing_dir file)' % pid)


def domain_xml(a, emulator, serial, ram='memfd'):
    backing = {
        'memfd': "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>",
        'file': "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>",
        'anon': '',
    }[ram]
    # KVM where the host has it; TCG (domain type 'qemu') where it has not: the same guest, the
    # same checks. QEMU's default CPU model either way, which both "hosts" share: passing the
    # host CPU through fails on some software KVMs of this kind (QEMU 7.2 asserts on
    # IA32_ARCH_CAPABILITIES, MSR 0x10a, which kvm_pvm refuses to set).
    dtype, cpu = ('kvm', '') if a.accel == 'kvm' else ('qemu', '')
    return """<domain type='%s' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  %s
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel></os>
  <features><acpi/></features>
  %s
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-L'/><qemu:arg value='/usr/share/seabios'/>
    <qemu:arg value='-L'/><qemu:arg value='/usr/share/qemu'/>%s
  </qemu:commandline>
</domain>
""" % (dtype, NAME, a.size_mib, backing, a.guest, cpu, emulator, serial,
       # FAULTLINE_QEMU_TRACE=pattern: QEMU trace events (-trace), into each side's QEMU log
       ''.join("<qemu:arg value='-trace'/><qemu:arg value='%s'/>" % t
               for t in os.environ.get('FAULTLINE_QEMU_TRACE', '').split(',') if t))


class DeviceAccess:
    """Gives a device node group `gid` and `mode` for a while; restores owner and mode after."""

    def __init__(self, path, gid, mode):
        self.path, self.gid, self.mode = path, gid, mode

    def __enter__(self):
        st = os.stat(self.path)
        self.saved = (st.st_gid, st.st_mode & 0o7777)
        os.chown(self.path, -1, self.gid)
        os.chmod(self.path, self.mode)
        return self

    def __exit__(self, *exc):
        os.chown(self.path, -1, self.saved[0])
        os.chmod(self.path, self.saved[1])


def reachable_copies(a):
    """For an unprivileged QEMU: its binary and the guest where its user can read them (the
    build cache is under /root), and a directory it can write its serial files into."""
    import pwd
    pw = pwd.getpwnam(a.qemu_user)
    os.chmod(a.workdir, 0o711)  # traversable; the logs stay unreadable to others
    a.io_dir = os.path.join(a.workdir, 'qemu-user')
    os.makedirs(a.io_dir, exist_ok=True)
    os.chown(a.io_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(a.io_dir, 0o755)
    for attr in ('qemu', 'guest'):
        copy = os.path.join(a.io_dir, os.path.basename(getattr(a, attr)))
        shutil.copy(getattr(a, attr), copy)
        os.chmod(copy, 0o755)
        setattr(a, attr, copy)
    return pw


class Run:
    def __init__(self, a):
        self.a = a
        self.results = []
        self.procs = []
        self.held = []  # fds keeping source RAM memfds alive after their QEMU exits
        self.skipped = []
        self.cannot_migrate = ''  # why this libvirt cannot migrate the domain's QEMU at all

    def record(self, case, ok, detail):
        self.results.append((case, ok))
        print('%s: %s — %s' % ('PASS' if ok else 'FAIL', case, detail), flush=True)

    def spawn(self, name, argv):
        log = open(os.path.join(self.a.workdir, name + '.log'), 'w')
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def faultline(self, *args):
        return subprocess.run([self.a.faultline] + list(args), capture_output=True, text=True)

    def boot(self, host, emulator=None, ram=None):
        """Starts the domain paused on `host`, gives the guest its mailbox, runs it until it has
        dirtied its memory. Returns (serial path, data start GPA)."""
        ram = ram or self.a.ram
        serial = os.path.join(self.a.io_dir, 'serial-%d.log' % len(self.results))
        xml = os.path.join(self.a.workdir, 'domain.xml')
        with open(xml, 'w') as f:
            f.write(domain_xml(self.a, emulator or self.a.qemu, serial, ram))
        host.virsh('create', xml, '--paused')
        if ram != 'anon':
            size = self.a.size_mib << 20
            mailbox = struct.pack('<IIQQQQIII', 0x4D544C46, 1, size, 0x5eed, 8192, 0, 0,
                                  1000000, 1)
            fd = os.open(memfd_path(host.qemu_pid()), os.O_RDWR)
            os.pwrite(fd, mailbox, MAILBOX_GPA)
            os.close(fd)
        host.virsh('resume', NAME)
        boot = wait_for(lambda: re.search(r'FLT cpu=0 boot .*data=0x([0-9a-f]+)-', read(serial)),
                        120, 'the guest to boot (SeaBIOS under this software KVM: ~15 s)')
        if ram != 'anon':
            wait_for(lambda: 'phase=seq' in read(serial), 300, 'the guest to dirty its memory')
        return serial, int(boot.group(1), 16)

    def verify(self, src_fd, dst, serial, data_start, serial_before):
        """Pauses the destination guest; compares every data page with the source's RAM."""
        dst.virsh('suspend', NAME)
        npages = (self.a.size_mib << 20) // PAGE
        first = data_start // PAGE
        dfd = os.open(memfd_path(dst.qemu_pid()), os.O_RDONLY)
        mism = low = 0
        try:
            for i in range(npages):
                s = os.pread(src_fd, PAGE, i * PAGE)
                d = os.pread(dfd, PAGE, i * PAGE)
                if s != d:
                    if i >= first:
                        mism += 1
                    else:
                        low += 1
        finally:
            os.close(dfd)
        text = read(serial)
        bad = sum(int(x) for x in re.findall(r' bad=(\d+)', text))
        if text.startswith(serial_before):
            new_lines = len(re.findall(r'phase=', text[len(serial_before):]))
        else:  # the destination's libvirt truncated the serial file when it opened it
            new_lines = len(re.findall(r'phase=', text))
        # The destination QEMU ran as the user libvirt was told (its real and effective uid).
        uids = re.search(r'^Uid:\s+(\d+)\s+(\d+)', read('/proc/%d/status' % dst.qemu_pid()), re.M)
        as_user = uids is not None and {int(uids.group(1)), int(uids.group(2))} == {self.a.qemu_uid}
        ok = mism == 0 and bad == 0 and new_lines > 0 and as_user
        return ok, ('%d/%d data pages identical, %d low pages rewritten by the running guest, '
                    'guest bad=%d, %d guest phases ran on the destination, destination QEMU '
                    'uid %s (want %d)' %
                    (npages - first - mism, npages - first, low, bad, new_lines,
                     uids.group(1) if uids else '?', self.a.qemu_uid))

    def migrate(self, src, dst, *extra):
        port = free_port()
        stats = os.path.join(self.a.workdir, 'migrate-%d.json' % len(self.results))
        argv = [self.a.faultline, 'migrate', '--domain=' + NAME, '--source_uri=' + src.uri,
                '--dest_uri=' + dst.uri, '--migrate_uri=tcp://127.0.0.1:%d' % port,
                '--stats_json=' + stats] + list(extra)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        with open(os.path.join(self.a.workdir, 'migrate-%d.log' % len(self.results)), 'w') as f:
            f.write(' '.join(argv) + '\n' + r.stdout + r.stderr)
        report = json.loads(read(stats)) if r.returncode == 0 and read(stats) else {}
        return r, report

    # -- cases ---------------------------------------------------------------------------

    def case_pager(self, A, B):
        self.pager_case('pager', A, B, warmup=False)

    def case_warmup(self, A, B):
        """Warm-up through libvirt (QEMU 10.2 or 11.1 + series): `faultline source` also takes the source
        QEMU's report of its guest's writes (--vmm_dirty_socket), `faultline serve --warmup`
        pulls RAM during pre-copy, and `faultline migrate --warmup_socket` passes that
        connection to the source QEMU; QEMU switches to post-copy once the pager's final round
        is in. Checked as `pager` is, and faultline's own figures must show the warm-up ran:
        at least one round, the switch, and faults after it far fewer than the pages."""
        self.pager_case('warmup', A, B, warmup=True)

    def pager_case(self, name, A, B, warmup):
        serial, data_start = self.boot(A)
        src_fd = os.open(memfd_path(A.qemu_pid()), os.O_RDONLY)
        self.held.append(src_fd)
        token = secrets.token_hex(32)
        port = free_port()
        sock = os.path.join(self.a.workdir, 'pager.sock')
        warm_sock = os.path.join(self.a.workdir, 'warm.sock')
        self.spawn('faultline-source', [self.a.faultline, 'source',
                                        '--listen=127.0.0.1:%d' % port, '--token=' + token,
                                        '--region=pc.ram=/proc/%d/fd/%d:%dM' %
                                        (os.getpid(), src_fd, self.a.size_mib)] +
                   (['--vmm_dirty_socket=' + warm_sock] if warmup else []))
        wait_for(lambda: 'serving' in read(os.path.join(self.a.workdir, 'faultline-source.log')),
                 30, 'faultline source')
        serve = self.spawn('faultline-serve', [self.a.faultline, 'serve', '--handoff=' + sock,
                                               '--connect=127.0.0.1:%d' % port, '--token=' + token,
                                               '--allow_uids=%d' % self.a.qemu_uid,
                                               '--state_dir=' + os.path.join(self.a.workdir,
                                                                             'state')] +
                           (['--warmup'] if warmup else []))
        wait_for(lambda: 'waiting for a VMM' in
                 read(os.path.join(self.a.workdir, 'faultline-serve.log')), 30, 'faultline serve')
        serial_before = read(serial)
        r, rep = self.migrate(A, B, '--handoff=' + sock,
                              *(['--warmup_socket=' + warm_sock] if warmup else []))
        if r.returncode != 0:
            self.record(name, False, 'faultline migrate exited %d: %s' %
                        (r.returncode, (r.stdout + r.stderr).strip().splitlines()[-3:]))
            return
        serve.wait(timeout=120)
        slog = read(os.path.join(self.a.workdir, 'faultline-serve.log'))
        start = re.search(r'^\{$', slog, re.M)
        fstats = json.loads(slog[start.start():]) if start else {}
        ok, detail = self.verify(src_fd, B, serial, data_start, serial_before)
        events = rep.get('events', [])
        # With warm-up nothing is left to fetch when the destination resumes: libvirt then
        # reports it "running (migration completed)"; the source still went through post-copy.
        want = ['source: paused (post-copy)',
                'destination: running' if warmup else 'destination: running (post-copy)']
        missing = [w for w in want if not any(w in e for e in events)]
        npages = (self.a.size_mib << 20) // PAGE
        ok = (ok and not missing and rep.get('dest_pager_capability') and
              A.state() in ('absent', 'shut off') and fstats.get('pages') == npages)
        warm = fstats.get('warmup') or {}
        rounds = warm.get('rounds') or []
        if warmup:
            # The guest only reads after its dirty phase: nearly everything is in place before
            # the switch, so post-copy fetches a small remainder (a tenth is generous).
            ok = (ok and rep.get('warmup') and warm.get('switched') and len(rounds) >= 1 and
                  warm.get('faults_after_switch', npages) < npages // 10)
        B.virsh('destroy', NAME, check=False)
        self.record(name, ok, '%s; libvirt: %.2f s, downtime %s ms, stream %.1f MiB; '
                    'faultline: %s pages (%s urgent, %s faults, p50 %s us)%s; events missing: %s'
                    % (detail, rep.get('seconds', -1), rep.get('downtime_ms'),
                       rep.get('data_processed_bytes', -1) / 1048576.0, fstats.get('pages'),
                       fstats.get('urgent_pages'), fstats.get('faults'),
                       (fstats.get('fault_latency') or {}).get('p50_ns', 0) // 1000,
                       '; warm-up: %d rounds (%s pages), switched %s, %s faults after the switch'
                       % (len(rounds), '+'.join(str(x.get('pages')) for x in rounds),
                          warm.get('switched'), warm.get('faults_after_switch'))
                       if warmup else '', missing or 'none'))

    def case_warmup_refused(self, A, B):
        """Warm-up asked of a QEMU with the 7.2 series, whose source cannot report its guest's
        writes: refused before anything moves, with the reason; the domain keeps running on the
        source with the pager capabilities untouched."""
        self.boot(A)
        r, _ = self.migrate(A, B, '--handoff=' + os.path.join(self.a.workdir, 'pager.sock'),
                            '--warmup_socket=' + os.path.join(self.a.workdir, 'warm.sock'))
        out = r.stdout + r.stderr
        caps = {c['capability']: c['state'] for c in json.loads(A.virsh(
            'qemu-monitor-command', NAME, '{"execute":"query-migrate-capabilities"}').stdout)[
                'return']}
        pager_on = caps.get('x-postcopy-external-pager')
        ok = (r.returncode != 0 and 'QEMU 10.2' in out and A.state() == 'running' and
              B.state() == 'absent' and pager_on is False)
        self.record('warmup-refused', ok, 'exit %d, source %s, destination %s, pager capability '
                    'on the source: %s; error: %s' %
                    (r.returncode, A.state(), B.state(), pager_on,
                     out.strip().splitlines()[-1] if out.strip() else ''))
        A.virsh('destroy', NAME, check=False)

    def case_plain(self, A, B):
        serial, data_start = self.boot(A)
        src_fd = os.open(memfd_path(A.qemu_pid()), os.O_RDONLY)
        self.held.append(src_fd)
        serial_before = read(serial)
        # Post-copy in the middle of the first pass (pre-copy limited to 8 MiB/s): a quiet
        # 256 MiB guest converges in one fast pass otherwise, and would end as pre-copy. The
        # switch is asked for from 100 ms on, but libvirt cannot pass it on before the source
        # QEMU's migration has started, and one attempt was seen to take 5 s there
        # (2026-12-06): at 32 MiB/s pre-copy had then moved nearly everything and post-copy
        # fetched nothing (0 requests). At 8 MiB/s 5 s move 40 of the 256 MiB.
        r, rep = self.migrate(A, B, '--pager=false', '--postcopy_after=100ms',
                              '--bandwidth_mib=8')
        if r.returncode != 0:
            self.record('plain', False, 'faultline migrate --pager=false exited %d: %s' %
                        (r.returncode, (r.stdout + r.stderr).strip().splitlines()[-3:]))
            return
        ok, detail = self.verify(src_fd, B, serial, data_start, serial_before)
        events = rep.get('events', [])
        ok = (ok and any('destination: running (post-copy)' in e for e in events) and
              rep.get('postcopy_requests', 0) > 0)
        B.virsh('destroy', NAME, check=False)
        self.record('plain', ok, '%s; QEMU post-copy via libvirt: %.2f s, downtime %s ms, '
                    '%s post-copy requests, stream %.1f MiB' %
                    (detail, rep.get('seconds', -1), rep.get('downtime_ms'),
                     rep.get('postcopy_requests'), rep.get('data_processed_bytes', -1) / 1048576.0))

    def case_no_pager(self, A, B):
        self.boot(A)
        sock = os.path.join(self.a.workdir, 'nobody.sock')
        r, _ = self.migrate(A, B, '--handoff=' + sock)
        out = (r.stdout + r.stderr)
        time.sleep(1)
        state = A.state()
        dlog = read(os.path.join(B.dir, 'log', 'qemu', NAME + '.log'))
        refused = "x-postcopy-external-pager: connect to '%s'" % sock in dlog
        ok = (r.returncode != 0 and 'faultline serve --handoff=' + sock in out and refused and
              state == 'running')
        self.record('no-pager', ok, 'exit %d, source domain %s, destination QEMU refused at '
                    'ADVISE: %s; error: %s' % (r.returncode, state, refused,
                                               out.strip().splitlines()[-1] if out.strip() else ''))
        A.virsh('destroy', NAME, check=False)
        B.virsh('destroy', NAME, check=False)

    def case_migrate_compat(self, A, B):
        """(--qemu_version=11.1) Can this libvirt drive QEMU 11's migration at all? libvirt 9.0
        (Debian 12's) passes `detach` to QEMU's `migrate`, which QEMU 11.0 removed: `faultline
        migrate` must refuse up front, with the cause and what to change, the domain still
        running on the source with the pager capability untouched and nothing started on the
        destination. A libvirt that migrates it passes too; the migrating cases then run, and
        are skipped (with this reason, counted) when it cannot."""
        serial, data_start = self.boot(A)
        src_fd = os.open(memfd_path(A.qemu_pid()), os.O_RDONLY)
        self.held.append(src_fd)
        serial_before = read(serial)
        r, _ = self.migrate(A, B, '--pager=false', '--postcopy_after=100ms', '--bandwidth_mib=8')
        out = r.stdout + r.stderr
        last = out.strip().splitlines()[-1] if out.strip() else ''
        if r.returncode == 0:  # a libvirt that can: the migration is checked as `plain`'s is
            ok, detail = self.verify(src_fd, B, serial, data_start, serial_before)
            B.virsh('destroy', NAME, check=False)
            self.record('migrate-compat', ok, 'this libvirt migrates a QEMU %s domain: %s' %
                        (self.a.qemu_version, detail))
            return
        caps = {c['capability']: c['state'] for c in json.loads(A.virsh(
            'qemu-monitor-command', NAME, '{"execute":"query-migrate-capabilities"}').stdout)[
                'return']}
        ok = ('cannot migrate this domain' in out and "'detach'" in out and
              'QEMU 11.0 removed' in out and 'build_qemu.sh --version=10.2' in out and
              A.state() == 'running' and B.state() == 'absent' and
              caps.get('x-postcopy-external-pager') is False)
        self.record('migrate-compat', ok, 'refused up front: exit %d, source %s, destination %s, '
                    'pager capability on the source: %s; error: %s' %
                    (r.returncode, A.state(), B.state(), caps.get('x-postcopy-external-pager'),
                     last))
        if ok:
            self.cannot_migrate = last

    def case_no_uffd_access(self, A, B):
        if self.a.qemu_uid == 0:
            print('SKIP: no-uffd-access — QEMU runs as root here (--qemu_user=root)', flush=True)
            self.skipped.append('no-uffd-access')
            return
        self.boot(A)
        sock = os.path.join(self.a.workdir, 'pager.sock')
        serve = self.spawn('faultline-serve-nouffd', [
            self.a.faultline, 'serve', '--handoff=' + sock, '--connect=127.0.0.1:1',
            '--token=' + secrets.token_hex(32), '--allow_uids=%d' % self.a.qemu_uid])
        wait_for(lambda: 'waiting for a VMM' in
                 read(os.path.join(self.a.workdir, 'faultline-serve-nouffd.log')), 30,
                 'faultline serve')
        with DeviceAccess('/dev/userfaultfd', 0, 0o600):  # root's alone, as a fresh boot has it
            r, _ = self.migrate(A, B, '--handoff=' + sock)
        out = r.stdout + r.stderr
        time.sleep(1)
        state = A.state()
        dlog = read(os.path.join(B.dir, 'log', 'qemu', NAME + '.log'))
        why = re.search(r'.*userfaultfd.*(Operation not permitted|Permission denied).*', dlog, re.I)
        ok = (r.returncode != 0 and state == 'running' and why is not None and
              serve.poll() is None and 'access to /dev/userfaultfd' in out)
        self.record('no-uffd-access', ok, 'exit %d, source domain %s, destination QEMU: %s; '
                    'faultline serve still waiting: %s; error: %s' %
                    (r.returncode, state, why.group(0).strip() if why else 'no userfaultfd error',
                     serve.poll() is None, out.strip().splitlines()[-1] if out.strip() else ''))
        A.virsh('destroy', NAME, check=False)
        B.virsh('destroy', NAME, check=False)

    def case_anon_ram(self, A, B):
        self.boot(A, ram='anon')
        r, _ = self.migrate(A, B)
        out = r.stdout + r.stderr
        ok = (r.returncode != 0 and "<access mode='shared'/>" in out and
              A.state() == 'running' and B.state() == 'absent')
        self.record('anon-ram', ok, 'exit %d, source %s, destination %s; error: %s' %
                    (r.returncode, A.state(), B.state(), out.strip().splitlines()[0]))
        A.virsh('destroy', NAME, check=False)

    def case_stock_qemu(self, A, B):
        stock = shutil.which('qemu-system-x86_64')
        if not stock:
            print('SKIP: stock-qemu — no Debian qemu-system-x86_64 installed')
            return
        self.boot(A, emulator=stock)
        r, _ = self.migrate(A, B)
        out = r.stdout + r.stderr
        ok = (r.returncode != 0 and "no 'x-postcopy-external-pager'" in out and
              A.state() == 'running' and B.state() == 'absent')
        self.record('stock-qemu', ok, 'exit %d, source %s; error: %s' %
                    (r.returncode, A.state(), out.strip().splitlines()[-1]))
        A.virsh('destroy', NAME, check=False)

    def case_no_domain(self, A, B):
        r = self.faultline('migrate', '--domain=no-such-vm', '--source_uri=' + A.uri,
                           '--dest_uri=' + B.uri)
        out = r.stdout + r.stderr
        self.record('no-domain', r.returncode != 0 and "no domain 'no-such-vm'" in out,
                    out.strip().splitlines()[-1] if out.strip() else 'no output')


# The cases that need the domain migrated, or whose refusal comes after that check (skipped
# when migrate-compat found that this libvirt cannot migrate the domain's QEMU at all).
MIGRATING = {'anon-ram', 'pager', 'no-pager', 'plain', 'no-uffd-access', 'warmup'}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--faultline', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--qemu', required=True, help='QEMU with faultline\'s series')
    ap.add_argument('--workdir', default='')
    ap.add_argument('--size_mib', type=int, default=256)
    ap.add_argument('--accel', default='kvm', choices=['kvm', 'tcg'],
                    help="domain type 'kvm', or 'qemu' (TCG) on a host without /dev/kvm")
    ap.add_argument('--qemu_version', default='7.2', choices=['7.2', '10.2', '11.1'],
                    help='which series --qemu has: warm-up runs on 10.2 and 11.1 and is '
                    'refused on 7.2')
    ap.add_argument('--cases', default='')
    ap.add_argument('--qemu_user', default='libvirt-qemu',
                    help="the user libvirt runs QEMU as (qemu.conf's user; 'root' for none)")
    a = ap.parse_args()
    # QEMU >= 10's x-ignore-shared leaves only named files out of the stream: file-backed RAM
    # there (on tmpfs, libvirtd_instance.sh), a memfd with the 7.2 series.
    newer = a.qemu_version != '7.2'
    a.ram = 'file' if newer else 'memfd'
    if not a.cases:
        a.cases = ('no-domain,' + ('migrate-compat,' if a.qemu_version == '11.1' else '') +
                   'anon-ram,stock-qemu,pager,no-pager,plain,no-uffd-access,' +
                   ('warmup' if newer else 'warmup-refused'))
    a.workdir = a.workdir or subprocess.run(['mktemp', '-d', '/var/tmp/faultline-libvirt.XXXXXX'],
                                            capture_output=True, text=True).stdout.strip()
    os.makedirs(a.workdir, exist_ok=True)
    a.io_dir, a.qemu_uid = a.workdir, 0
    grants = []
    if a.qemu_user != 'root':
        import pwd
        try:
            pwd.getpwnam(a.qemu_user)
        except KeyError:
            print("libvirt tests: 0 passed, 1 failed (no user '%s' [setup]: Debian's "
                  "libvirt-daemon-system creates libvirt-qemu; or pass --qemu_user=root)" %
                  a.qemu_user)
            return 1
        with open('/proc/sys/vm/unprivileged_userfaultfd') as f:
            if f.read().strip() != '0':
                print('libvirt tests: 0 passed, 1 failed (vm.unprivileged_userfaultfd is not 0: '
                      'the run would not show that QEMU uses /dev/userfaultfd)')
                return 1
        pw = reachable_copies(a)
        a.qemu_uid = pw.pw_uid
        # What an operator grants the QEMU user (udev rules do it on a full install).
        for dev in ['/dev/userfaultfd'] + (['/dev/kvm'] if a.accel == 'kvm' else []):
            grants.append(DeviceAccess(dev, pw.pw_gid, 0o660).__enter__())
    run = Run(a)
    daemons = []
    try:
        A = Daemon(a.workdir, 'A', a.qemu_user)
        daemons.append(A)
        B = Daemon(a.workdir, 'B', a.qemu_user)
        daemons.append(B)
        print('two libvirtd "hosts": %s and %s (logs in %s; %s; QEMU runs as %s)' %
              (A.uri, B.uri, a.workdir, a.accel, a.qemu_user), flush=True)
        for case in a.cases.split(','):
            fn = getattr(run, 'case_' + case.replace('-', '_'))
            if run.cannot_migrate and case in MIGRATING:
                print('SKIP: %s — %s' % (case, run.cannot_migrate), flush=True)
                run.skipped.append(case)
                continue
            try:
                fn(A, B)
            except Exception as e:  # a case that cannot run is a failure, with the reason
                run.record(case, False, 'error: %s (logs in %s)' % (e, a.workdir))
            for d in daemons:
                d.virsh('destroy', NAME, check=False)
            for p in run.procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
            run.procs = []
    finally:
        for d in daemons:
            d.stop()
        for fd in run.held:
            os.close(fd)
        for g in grants:
            g.__exit__()
    passed = sum(1 for _, ok in run.results if ok)
    failed = len(run.results) - passed
    print('libvirt tests: %d passed, %d failed%s' %
          (passed, failed, ', %d skipped (%s)' % (len(run.skipped), ', '.join(run.skipped))
           if run.skipped else ''), flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
