#!/usr/bin/env python3
"""A real QEMU-to-QEMU post-copy migration through faultline, on this machine, verified.

Roles (each its own process):
  source QEMU   guest RAM = memory-backend-file on /dev/shm (share=on); runs faultline-guest,
                which dirties every data page with a pattern, then keeps reading pages.
  faultline source   serves the source's RAM file (read-only mapping) over loopback TCP.
  faultline serve    waits on a Unix socket for the destination QEMU's hand-off.
  dest QEMU     -incoming defer, empty RAM file on /dev/shm, x-postcopy-external-pager.
                10.2 series: a connection to faultline's socket passed with getfd and the
                x-postcopy-external-pager-fd parameter; at post-copy ADVISE (source still
                running) it hands over its uffd + RAM block, faultline's ack approves the
                switchover (switchover-ack), and LISTEN tells faultline to start placing.
                7.2 series: the socket path as a -global; hand-off and ack wait at LISTEN.
                Either completes when faultline reports every page.
Then: the guest's own check (every page it reads on the destination carries the pattern,
"bad=0"), and every page of the destination's RAM file checksummed against the source's:
pages at or above the guest's data start must all match; pages below it (the guest's image,
stack and status block, which the guest keeps writing on the destination) are reported.

Used by run_qemu_migration.sh, which builds QEMU and faultline first.
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
import threading
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import EventQmp  # noqa: E402  (the shared QMP client)
from harness import (free_port, give_dirty_log, give_pager, read, remove_files,  # noqa: E402
                     stop_processes, wait_for)

PAGE = 4096
MAILBOX_GPA = 0x5000



def churn_rate(ram, data_start, seconds):
    """How often per second the guest rewrites its hot block (word 1 of the first data page:
    the churn's generation counter), read from its RAM file over `seconds`."""
    def gen():
        with open(ram, 'rb') as f:
            f.seek(data_start + 8)
            return struct.unpack('<Q', f.read(8))[0]
    g0, t0 = gen(), time.time()
    time.sleep(seconds)
    return (gen() - g0) / (time.time() - t0)

def step(msg):
    if os.environ.get('FAULTLINE_QEMU_DEBUG'):
        print('  .. %s (%.1f)' % (msg, time.time()), file=sys.stderr, flush=True)


def page_digests(path, npages):
    out = []
    with open(path, 'rb') as f:
        for _ in range(npages):
            out.append(hashlib.blake2b(f.read(PAGE), digest_size=16).digest())
    return out


def print_report(a, result, stats, resume_s, low_diff, data_mismatch):
    """The demo's report, for the QEMU-guest demo (tools/demo.sh without /dev/kvm)."""
    lat = stats.get('fault_latency') or {}
    us = lambda k: '%.0f µs' % (lat.get(k, 0) / 1000.0)
    rows = [
        ('guest', '%d MiB of RAM (memory-backend-file, share=on), 1 vCPU, QEMU %s' %
         (a.size_mib, a.accel.upper())),
        ('downtime', '%s ms (the source\'s STOP to the destination\'s RESUME; QEMU\'s own '
         'figure: %s ms)' % (result.get('downtime_ms'), result.get('downtime_ms_qemu'))),
        ('total time', '%.2f s from migrate to every page present' %
         result.get('seconds_to_complete', 0)),
        ('pages', 'urgent %s, bulk %s, zero %s (of %d)' %
         (stats.get('urgent_pages'), stats.get('bulk_pages'), stats.get('zero_pages'),
          result.get('pages', 0))),
        ('vCPU faults', '%s served by faultline (MINOR %s)' % (stats.get('faults'),
                                                               stats.get('minor_faults'))),
        ('fault latency', 'p50 %s, p99 %s, max %s (faultline: event read to wake)' %
         (us('p50_ns'), us('p99_ns'), us('max_ns'))),
        ('guest check', 'bad=%d over %d touch phases on the destination' %
         (result.get('guest_bad', 0), result.get('guest_phase_lines_on_destination', 0))),
    ]
    print('\n== faultline demo: a QEMU guest migrated post-copy through faultline')
    for k, v in rows:
        print('  %-14s %s' % (k, v))
    print('guest memory verified: %d pages, %d mismatches (%d pages below the guest\'s data, '
          'which it rewrites on the destination, differ as expected)' %
          (result.get('data_pages', 0), len(data_mismatch), len(low_diff)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--qemu', required=True)
    ap.add_argument('--faultline', required=True)
    ap.add_argument('--guest', required=True)
    ap.add_argument('--size_mib', type=int, default=256)
    ap.add_argument('--accel', default='tcg')
    ap.add_argument('--rounds', type=int, default=100000)
    ap.add_argument('--firmware', action='append', default=[])
    ap.add_argument('--workdir', default='')
    ap.add_argument('--no_pager', action='store_true',
                    help='negative test: nobody listens on the socket; the destination must '
                         'refuse at ADVISE with a clear error (never run the guest), the '
                         'source migration fail in pre-copy and the source guest keep running')
    ap.add_argument('--kill_pager', action='store_true',
                    help='(10.2 series) SIGKILL faultline serve while it places pages; the '
                         'destination must wait (pager "lost", migration still post-copy) '
                         'until a new faultline serve, given with x-postcopy-external-pager-fd, '
                         'resumes from the dead one\'s state file. With --warmup: killed during '
                         'warm-up (pre-copy), the migration must fail and the guest keep running '
                         'on the source')
    ap.add_argument('--dest_prealloc', action='store_true',
                    help='the destination\'s memory backend with prealloc=on: every page is '
                         'present before the hand-off; faultline must punch them out (the guest '
                         'would otherwise run on zeros) and every page must still verify')
    ap.add_argument('--dest_user', default='',
                    help='run the destination QEMU as this (unprivileged) user, with '
                         'vm.unprivileged_userfaultfd=0: its userfaultfds must come from '
                         '/dev/userfaultfd (QEMU\'s uffd_open), which the run opens to the '
                         'user\'s group for its duration (10.2 series)')
    ap.add_argument('--warmup', action='store_true',
                    help='(10.2 series) warm-up: the guest rewrites a hot tenth of its data '
                         'pages all along; faultline copies RAM while it still runs on the '
                         'source, the source QEMU reporting the written pages over a second '
                         'pager connection (faultline source --vmm_dirty_socket). The '
                         'destination is started with -S, so that after the migration every '
                         'page of its RAM must equal the source\'s, which stopped mid-write; '
                         'then it runs and the guest checks its pattern')
    ap.add_argument('--warmup_throttle', type=int, default=0,
                    help='(with --warmup; series patch 8) faultline serve --warmup_throttle: '
                         'rounds that do not shrink ask the source QEMU to throttle its guest. '
                         'Checked: the source QEMU reports the throttle while warm-up runs (under '
                         'TCG the rounds never shrink, so it must), and lifts it: at the switch, '
                         'or with --kill_pager when the migration fails (the guest then rewrites '
                         'its hot block at its old pace again)')
    ap.add_argument('--report', action='store_true',
                    help='end with the demo\'s report table (tools/demo.sh on a host without '
                         '/dev/kvm)')
    ap.add_argument('--run_after', type=float, default=2.0,
                    help='seconds the destination guest keeps running after completion')
    a = ap.parse_args()

    qver = subprocess.run([a.qemu, '--version'], capture_output=True,
                          text=True).stdout.split('\n')[0].split('version ')[-1]
    # The 10.2 series (v3) takes the pager connection as an fd over QMP (getfd + the
    # x-postcopy-external-pager-fd parameter) and hands over at ADVISE, gated by
    # switchover-ack; the 7.2 series connects to a socket path at LISTEN.
    fd_interface = not qver.startswith('7.')
    work = a.workdir or tempfile.mkdtemp(prefix='faultline-qemu-')
    os.makedirs(work, exist_ok=True)
    tag = 'faultline-qemu-%d' % os.getpid()
    src_ram, dst_ram = '/dev/shm/%s-src' % tag, '/dev/shm/%s-dst' % tag
    size = a.size_mib << 20
    npages = size // PAGE
    procs = []
    result = {}

    def qfile(name):
        """A QEMU's serial file or QMP socket: the unprivileged destination's in its own dir."""
        return os.path.join(pub if a.dest_user and name.startswith('dst') else work, name)

    def spawn(name, argv):
        if name == 'dst-qemu' and a.dest_user:
            argv = ['setpriv', '--reuid=' + a.dest_user, '--regid=%d' % pw.pw_gid,
                    '--clear-groups', '--'] + argv
        log = open(os.path.join(work, name + '.log'), 'w')
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    def qemu_argv(name, ram, extra):
        prealloc = ',prealloc=on' if a.dest_prealloc and name == 'dst' else ''
        argv = [a.qemu, '-accel', a.accel, '-m', '%dM' % a.size_mib, '-nodefaults',
                '-vga', 'none', '-display', 'none', '-no-reboot',
                '-object', 'memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on%s'
                % (a.size_mib, ram, prealloc),
                '-machine', 'pc,memory-backend=mem', '-kernel', a.guest,
                '-serial', 'file:' + qfile(name + '.serial'),
                '-qmp', 'unix:%s,server=on,wait=off' % qfile(name + '.qmp')]
        if a.accel == 'tcg':
            argv[argv.index('-m'):argv.index('-m')] = ['-cpu', 'max']
        for fw in a.firmware:
            argv += ['-L', fw]
        return argv + extra

    uffd_dev_restore = None
    pub = None
    if a.dest_user:
        import pwd
        pw = pwd.getpwnam(a.dest_user)
        with open('/proc/sys/vm/unprivileged_userfaultfd') as f:
            if f.read().strip() != '0':
                print('FAIL: vm.unprivileged_userfaultfd is not 0: the run would not show '
                      'that /dev/userfaultfd is used')
                return 1
        # The user's own copies: /root is not reachable for it.
        pub = tempfile.mkdtemp(prefix='faultline-qemu-user-')
        for attr in ('qemu', 'guest'):
            dst_copy = os.path.join(pub, os.path.basename(getattr(a, attr)))
            shutil.copy(getattr(a, attr), dst_copy)
            os.chmod(dst_copy, 0o755)
            setattr(a, attr, dst_copy)
        os.chmod(pub, 0o777)  # its serial file and QMP socket (work may be out of its reach)
        st = os.stat('/dev/userfaultfd')
        uffd_dev_restore = (st.st_mode & 0o7777, st.st_gid)
        os.chown('/dev/userfaultfd', -1, pw.pw_gid)
        os.chmod('/dev/userfaultfd', 0o660)
    try:
        remove_files(src_ram, dst_ram)
        # 1. Source: boot paused, give the guest its inputs (the mailbox, in RAM), run it.
        spawn('src-qemu', qemu_argv('src', src_ram, ['-S']))
        src = EventQmp(os.path.join(work, 'src.qmp'))
        # mode 0 = the default phases; warm-up: also FLT_MODE_CHURN (0x10), a 100 permille
        # hot block rewritten until churn_stop (offset 56) is set.
        mode, churn = (0x1f, 100) if a.warmup else (0, 0)
        mailbox = struct.pack('<IIQQQQIII3I', 0x4D544C46, 1, size, 0x5eed, 16384, 0, mode,
                              a.rounds, 1, churn, 0, 0)
        with open(src_ram, 'r+b') as f:
            f.seek(MAILBOX_GPA)
            f.write(mailbox)
        src.ok('cont')
        serial = os.path.join(work, 'src.serial')
        boot = wait_for(lambda: re.search(r'FLT cpu=0 boot .*data=0x([0-9a-f]+)-', read(serial)),
                        120, 'the guest to boot on the source')
        data_start = int(boot.group(1), 16)
        wait_for(lambda: ('phase=dirty' if a.warmup else 'phase=seq round=1') in read(serial),
                 300, 'the guest to dirty its memory and start %s' %
                 ('rewriting its hot block' if a.warmup else 'reading'))
        print('source guest: %s, dirtied %d pages from 0x%x' %
              (a.accel, (size - data_start) // PAGE, data_start), flush=True)

        # 2. faultline: the page server on the source's RAM file, and serve on a socket.
        token = secrets.token_hex(32)
        fl_port, mig_port = free_port(), free_port()
        sock = os.path.join(work, 'pager.sock')
        warm_sock = os.path.join(work, 'warm.sock')
        spawn('faultline-source', [a.faultline, 'source', '--listen=127.0.0.1:%d' % fl_port,
                                   '--token=' + token, '--region=mem=%s:%dM' % (src_ram, a.size_mib)]
              + (['--vmm_dirty_socket=' + warm_sock] if a.warmup else []))
        wait_for(lambda: 'serving' in read(os.path.join(work, 'faultline-source.log')), 30,
                 'faultline source')
        serve_argv = [a.faultline, 'serve', '--handoff=' + sock,
                      '--connect=127.0.0.1:%d' % fl_port, '--token=' + token,
                      '--state_dir=' + os.path.join(work, 'state')] + (
                          ['--warmup'] if a.warmup else []) + (
                          ['--warmup_throttle=%d' % a.warmup_throttle]
                          if a.warmup_throttle else []) + (
                          # Killed "while it warms up": slow enough that the kill 0.5 s in
                          # lands in the first round (on a fast host 128 MiB converged and
                          # switched before it, 2026-12-06).
                          ['--warmup_rate_mib=16']
                          if a.warmup and a.kill_pager and not a.warmup_throttle else [])

        def start_serve(name, extra=()):
            p = spawn(name, serve_argv + list(extra))
            wait_for(lambda: 'waiting for a VMM' in read(os.path.join(work, name + '.log')), 30,
                     name)
            return p

        serve_name = 'faultline-serve'
        if not a.no_pager:
            # --kill_pager: the first serve pulls slowly (4 KiB at a time), so that it is
            # killed while pages are still missing.
            serve = start_serve(serve_name, ['--bulk_batch_kib=4', '--bulk_window=1']
                                if a.kill_pager else [])

        # 3. Destination QEMU, waiting for the stream, the pager socket named.
        cap_names = ['postcopy-ram', 'x-ignore-shared', 'x-postcopy-external-pager']
        if fd_interface:
            cap_names += ['return-path', 'switchover-ack']
            spawn('dst-qemu', qemu_argv('dst', dst_ram, ['-incoming', 'defer'] +
                                        (['-S'] if a.warmup else [])))
        else:
            spawn('dst-qemu', qemu_argv('dst', dst_ram, [
                '-incoming', 'defer',
                '-global', 'migration.x-postcopy-external-pager-socket=' + sock]))
        dst = EventQmp(qfile('dst.qmp'))
        caps = [{'capability': c, 'state': True} for c in cap_names]
        if fd_interface:
            # The pager's connection: management connects and passes it with getfd; the
            # parameter takes only a Unix stream socket.
            r, w = os.pipe()
            dst.getfd('notasocket', r)
            os.close(r)
            os.close(w)
            e = dst.cmd('migrate-set-parameters', **{'x-postcopy-external-pager-fd':
                                                     'notasocket'})
            if 'error' not in e:
                raise RuntimeError('a pipe was accepted as the pager connection')
            print('refused a pipe as the pager connection: %s' % e['error']['desc'], flush=True)
            if not a.no_pager:
                give_pager(dst, sock, 'qemu-' + qver)
        # migrate_caps_check refuses impossible combinations, with reasons:
        for bad in (['x-postcopy-external-pager'],
                    ['postcopy-ram', 'x-postcopy-external-pager'],
                    cap_names + ['postcopy-blocktime']):
            r = dst.cmd('migrate-set-capabilities',
                        capabilities=[{'capability': c, 'state': True} for c in bad])
            if 'error' not in r:
                raise RuntimeError('capabilities %s were accepted' % bad)
            print('refused %s: %s' % ('+'.join(bad), r['error']['desc']), flush=True)
            dst.ok('migrate-set-capabilities',
                   capabilities=[{'capability': c, 'state': False} for c in bad])
        dst.ok('migrate-set-capabilities', capabilities=caps)
        step("dst.ok('migrate-incoming'")
        dst.ok('migrate-incoming', uri='tcp:127.0.0.1:%d' % mig_port)
        step("src.ok('migrate-set-capabilities'")
        src.ok('migrate-set-capabilities', capabilities=caps)
        if a.warmup:
            # The source QEMU's dirty-log connection: management connects to faultline
            # source's socket and passes it like the destination's pager connection.
            give_dirty_log(src, warm_sock)

        # 4. Migrate. The switch to post-copy happens on migrate-start-postcopy or, with the
        # pager, by itself once the (small) stream has converged.
        prealloc_bytes = 0
        if a.dest_prealloc:
            # The precondition the part is about: every page of the destination's RAM is
            # present before the hand-off (else it would prove nothing).
            prealloc_bytes = os.stat(dst_ram).st_blocks * 512
            if prealloc_bytes < size * 9 // 10:
                raise RuntimeError('prealloc=on left the destination RAM file %d of %d bytes '
                                   'allocated' % (prealloc_bytes, size))
        t0 = time.time()
        step("src.ok('migrate', uri")
        src.ok('migrate', uri='tcp:127.0.0.1:%d' % mig_port)
        if not a.no_pager:  # (no pager: let the destination's ADVISE-time check act first)
            step("src.cmd('migrate-start-postcopy')")
            src.cmd('migrate-start-postcopy')

        if a.no_pager:
            dlog = os.path.join(work, 'dst-qemu.log')
            dst_proc = [p for n, p in procs if n == 'dst-qemu'][0]
            wait_for(lambda: dst_proc.poll() is not None or 'external-pager' in read(dlog),
                     120, 'the destination to refuse')
            time.sleep(1)
            err = [l for l in read(dlog).splitlines() if 'external-pager' in l]
            ran = 'phase=' in read(qfile('dst.serial'))
            # The destination checks the pager at ADVISE, the first command in the stream:
            # the migration must fail while it is still pre-copy, the source guest running.
            try:
                src_state = wait_for(lambda: (lambda st: st if st in ('failed', 'completed',
                                                                     'postcopy-paused') else None)(
                    src.ok('query-migrate').get('status')), 60, 'the source migration to end')
                src_run = src.ok('query-status')['status']
            except Exception as e:
                src_state, src_run = 'unknown (%s)' % e, 'unknown'
            ok = bool(err) and not ran and src_state == 'failed' and src_run == 'running'
            print('%s: without a pager the destination refused at ADVISE (%s); guest ran on '
                  'the destination: %s; source migration: %s, source guest: %s' %
                  ('PASS' if ok else 'FAIL', err[0] if err else 'no error logged', ran,
                   src_state, src_run), flush=True)
            return 0 if ok else 1

        def dst_status():
            return dst.ok('query-migrate').get('status')

        def pager_view():  # QEMU's own view of the pager (10.2 series: query-migrate)
            return dst.ok('query-migrate').get('x-external-pager') or {}
        throttled = []  # cpu-throttle-percentage values the source QEMU reported

        def watch_throttle():
            while not throttle_done.is_set():
                try:
                    p = src.ok('query-migrate').get('cpu-throttle-percentage')
                except Exception:  # the QMP connection closes with the QEMU
                    return
                if p and p not in throttled:
                    throttled.append(p)
                time.sleep(0.02)
        throttle_done = threading.Event()
        if a.warmup_throttle:
            # Polled by a thread (Qmp is thread-safe; QEMU takes one QMP client).
            threading.Thread(target=watch_throttle, daemon=True).start()
        if a.warmup and a.kill_pager:
            # faultline serve SIGKILLed while it warms up (pre-copy): the destination's pager
            # connection ends before listen, so its incoming migration fails, the source's
            # return path with it — the source must never stop its guest for good.
            slog = os.path.join(work, serve_name + '.log')
            wait_for(lambda: 'warming up' in read(slog), 120, 'faultline to start warming up')
            if a.warmup_throttle:
                # Killed while the guest is throttled: QEMU must lift the throttle itself.
                wait_for(lambda: throttled and max(throttled) >= 50, 120,
                         'the source QEMU to throttle its guest by 50 %% or more')
                rate_throttled = churn_rate(src_ram, data_start, 0.2)
            else:
                time.sleep(0.5)
            serve.kill()
            serve.wait()
            src_state = wait_for(lambda: (lambda st: st if st in ('failed', 'completed',
                                                                 'postcopy-active') else None)(
                src.ok('query-migrate').get('status')), 120, 'the source migration to end')
            src_run = src.ok('query-status')['status']
            ran = 'phase=' in read(qfile('dst.serial'))
            ok = src_state == 'failed' and src_run == 'running' and not ran
            if a.warmup_throttle:
                # query-migrate shows no throttle for a failed migration: the guest's own pace
                # does — its hot-block rewrites per second, throttled and after.
                throttle_done.set()
                rate_after = churn_rate(src_ram, data_start, 0.5)
                lifted = rate_after > 1.5 * rate_throttled
                print('%s: throttle lifted after the failure: the guest rewrote its hot block '
                      '%.0f times/s throttled at %s %%, %.0f times/s after' %
                      ('PASS' if lifted else 'FAIL', rate_throttled,
                       '/'.join(map(str, throttled)), rate_after), flush=True)
                ok = ok and lifted
            print('%s: faultline killed during warm-up: source migration %s (%s), source guest '
                  '%s, guest ran on the destination: %s' %
                  ('PASS' if ok else 'FAIL', src_state,
                   src.ok('query-migrate').get('error-desc', '-'), src_run, ran), flush=True)
            return 0 if ok else 1
        wait_for(lambda: src.ok('query-status')['status'] in ('postmigrate', 'finish-migrate')
                 or src.ok('query-migrate').get('status') == 'postcopy-active', 120,
                 'the source to stop')
        t_switch = time.time()
        warm_mismatch = None
        if a.warmup:
            # The destination guest has not run: when the migration completes, its RAM must
            # be the source's, page for page — the hot block included, which the source's
            # guest was rewriting until the switch.
            wait_for(lambda: dst_status() in ('completed', 'failed'), 600,
                     'the destination migration to complete')
            if dst_status() != 'completed':
                raise RuntimeError('destination migration %s' % dst_status())
            s_d, d_d = page_digests(src_ram, npages), page_digests(dst_ram, npages)
            warm_mismatch = [i for i in range(npages) if s_d[i] != d_d[i]]
            # The option ROM and BIOS shadow (0xc0000-0xfffff) is the destination QEMU's own
            # to write when it loads the device state (under KVM, kvmvapic updates its ROM's
            # state there; plain post-copy shows the same page differing). Every other page
            # — the guest's image, stack, mailbox and data — must be the source's.
            rom_area = [i for i in warm_mismatch if 0xc0000 <= i * PAGE < 0x100000]
            warm_mismatch = [i for i in warm_mismatch if i not in rom_area]
            src_churn = re.findall(r'phase=churn', read(serial))
            for i in warm_mismatch[:4]:  # what differs, if anything
                with open(src_ram, 'rb') as f1, open(dst_ram, 'rb') as f2:
                    f1.seek(i * PAGE)
                    f2.seek(i * PAGE)
                    b_s, b_d = f1.read(PAGE), f2.read(PAGE)
                offs = [o for o in range(PAGE) if b_s[o] != b_d[o]]
                print('  differs: gpa 0x%x, %d bytes from offset 0x%x: source %s destination %s'
                      % (i * PAGE, len(offs), offs[0], b_s[offs[0]:offs[0] + 8].hex(),
                         b_d[offs[0]:offs[0] + 8].hex()), flush=True)
            print('warm-up: destination RAM after the migration, before its guest ran: %d of '
                  '%d pages differ from the source\'s (source guest stopped while churning: '
                  '%s; %d page(s) of the ROM area rewritten by the destination QEMU: %s)' %
                  (len(warm_mismatch), npages, not src_churn, len(rom_area),
                   ' '.join('0x%x' % (i * PAGE) for i in rom_area) or '-'), flush=True)
            # Let the guest go on past its churn phase (churn_stop = 2), then run it.
            with open(dst_ram, 'r+b') as f:
                f.seek(MAILBOX_GPA + 56)
                f.write(struct.pack('<I', 2))
            dst.ok('cont')
        step('resumed = wait_for')
        resumed = wait_for(lambda: dst.ok('query-status')['status'] == 'running', 120,
                           'the destination guest to run')
        t_run = time.time()
        if a.kill_pager:
            wait_for(lambda: pager_view().get('done-pages', 0) >= npages // 20, 60,
                     'the pager to place 5 % of the pages')
            serve.kill()
            serve.wait()
            killed_at = pager_view().get('done-pages', 0)
            if killed_at >= npages:
                raise RuntimeError('the pager completed before it was killed')
            wait_for(lambda: pager_view().get('status') == 'lost', 30,
                     'the destination to report the pager lost')
            time.sleep(1)  # the guest waits; the migration must not fail meanwhile
            st = dst_status()
            if st != 'postcopy-active':
                raise RuntimeError('with the pager lost the destination migration is %s' % st)
            print('pager killed with %d of %d pages placed: destination still %s, '
                  'x-external-pager %s' % (killed_at, npages, st, json.dumps(pager_view())),
                  flush=True)
            serve_name = 'faultline-serve-2'
            serve = start_serve(serve_name)
            give_pager(dst, sock, 'qemu-' + qver)
        step('final = wait_for')
        final = wait_for(lambda: dst_status() in ('completed', 'failed') and dst_status(), 600,
                         'the destination migration to complete')
        t_done = time.time()
        if final != 'completed':
            raise RuntimeError('destination migration %s' % final)
        # The source reports its downtime once it has completed too.
        wait_for(lambda: src.ok('query-migrate').get('status') in ('completed', 'failed'), 60,
                 'the source migration to complete')
        src_info = src.ok('query-migrate')
        dst.ok('query-status')  # reads any event still queued on the destination's socket
        # Downtime as the guest sees it: the source's STOP to the destination's RESUME (QMP
        # timestamps, one clock). QEMU's own figure is not used: below 1 ms it reads as "not
        # set yet" and is overwritten at completion with the whole post-copy phase.
        t_stop, t_resume = src.first_event('STOP', t0), dst.first_event('RESUME', t0)
        downtime_ms = (round((t_resume - t_stop) * 1000, 1)
                       if t_stop is not None and t_resume is not None else None)
        print('migration: source %s (downtime %s ms; QEMU\'s own figure %s ms), destination '
              'completed %.2f s after migrate (guest running %.2f s after the switch)' %
              (src_info.get('status'), downtime_ms, src_info.get('downtime'), t_done - t0,
               t_run - t_switch), flush=True)

        if a.dest_user:
            dpid = [p for n, p in procs if n == 'dst-qemu'][0].pid
            uids = wait_for(lambda: (lambda t: t and t.group(1))(re.search(
                r'^Uid:\s+(\d+)', read('/proc/%d/status' % dpid), re.M)), 10,
                'the destination QEMU\'s uid')
            print('destination QEMU ran as uid %s (%s), vm.unprivileged_userfaultfd=0: its '
                  'userfaultfds came from /dev/userfaultfd' % (uids, a.dest_user), flush=True)
            if int(uids) == 0:
                raise RuntimeError('the destination QEMU runs as root')
        if fd_interface:
            # QEMU's own view of the pager (query-migrate on the destination).
            pager_info = pager_view()
            print('destination query-migrate x-external-pager: %s' % json.dumps(pager_info),
                  flush=True)
            if (not pager_info or pager_info.get('status') != 'completed' or
                    pager_info.get('done-pages') != pager_info.get('total-pages') or
                    pager_info.get('total-pages') != npages):
                raise RuntimeError('query-migrate x-external-pager: %s' % pager_info)

        # 5. faultline's report; the guest keeps reading on the destination for a while.
        step('serve.wait(timeout=60)')
        serve.wait(timeout=60)
        serve_log = read(os.path.join(work, serve_name + '.log'))
        start = re.search(r'^\{$', serve_log, re.M)  # serve prints its stats last
        stats = json.loads(serve_log[start.start():]) if start else {}
        time.sleep(a.run_after)
        # A touch phase prints its line when it ends: under this machine's emulated KVM one
        # phase of 16384 touches takes ~3 s, longer than run_after — wait for the first one.
        wait_for(lambda: 'phase=' in read(qfile('dst.serial')), 120,
                 'the guest to finish a touch phase on the destination')
        dst.ok('stop')
        dserial = read(qfile('dst.serial'))
        guest_lines = [l for l in dserial.splitlines() if 'phase=' in l]
        guest_bad = sum(int(x) for x in re.findall(r' bad=(\d+)', dserial))
        # dst.serial is the destination QEMU's own file: every line in it was printed there
        # (under KVM the source prints more rounds than the destination before the switch, so
        # the source's count must not be subtracted).
        new_lines = len(guest_lines)

        # 6. Every page: source (paused since the switch) vs destination (stopped now).
        src_st = src.ok('query-status')['status']
        if src_st not in ('postmigrate', 'paused', 'finish-migrate'):
            raise RuntimeError('source is %s, not paused' % src_st)
        s_d, d_d = page_digests(src_ram, npages), page_digests(dst_ram, npages)
        first_data = data_start // PAGE
        data_mismatch = [i for i in range(first_data, npages) if s_d[i] != d_d[i]]
        if a.warmup:
            # Checked before the guest ran (above); since, it may have finished the one churn
            # write it was stopped before.
            data_mismatch = warm_mismatch
        low_diff = [i for i in range(first_data) if s_d[i] != d_d[i]]
        zero = hashlib.blake2b(b'\0' * PAGE, digest_size=16).digest()
        dst_zero_data = sum(1 for i in range(first_data, npages) if d_d[i] == zero)
        result.update({
            'verified_pages': npages, 'pages': npages, 'data_pages': npages - first_data,
            'data_mismatches': len(data_mismatch), 'low_pages_differing': len(low_diff),
            'low_differing_gpas': ['0x%x' % (i * PAGE) for i in low_diff[:16]],
            'dst_zero_data_pages': dst_zero_data, 'guest_bad': guest_bad,
            'guest_phase_lines_on_destination': new_lines,
            'seconds_to_complete': round(t_done - t0, 3),
            'downtime_ms': downtime_ms,
            'downtime_ms_qemu': src_info.get('downtime'),
            'faultline': {k: stats.get(k) for k in ('pages', 'urgent_pages', 'bulk_pages',
                                                    'zero_pages', 'faults', 'minor_faults',
                                                    'eexist', 'stale_pages_dropped',
                                                    'seconds')},
            'fault_latency': stats.get('fault_latency'),
            'warmup': stats.get('warmup'),
        })
        print(json.dumps(result, indent=1), flush=True)
        if a.report:
            print_report(a, result, stats, t_run - t_switch, low_diff, data_mismatch)
        ok = (not data_mismatch and guest_bad == 0 and new_lines > 0 and
              stats.get('pages') == npages and len(low_diff) <= 64)
        warm = stats.get('warmup') or {}
        if a.warmup and not (warm.get('switched') and len(warm.get('rounds') or []) >= 2 and
                             any(r.get('evicted') for r in warm.get('rounds'))):
            # Else the part proves nothing: no round found a page written after it was sent.
            print('FAIL: warm-up did not run rounds that dropped rewritten pages: %s' % warm)
            ok = False
        if a.warmup_throttle:
            throttle_done.set()
            asked = [r.get('throttle') for r in warm.get('rounds') or [] if r.get('throttle')]
            still = src_info.get('cpu-throttle-percentage')
            # Under TCG the guest rewrites its whole hot block between any two rounds: the
            # rounds never shrink, so the throttle must have been asked for and applied.
            need = a.accel == 'tcg'
            t_ok = not still and (asked and throttled or not need)
            print('%s: throttle: rounds asked for %s %%, the source QEMU reported %s %%, after the '
                  'switch: %s' % ('PASS' if t_ok else 'FAIL', '/'.join(map(str, asked)) or 'none',
                                  '/'.join(map(str, throttled)) or 'none',
                                  'still %s %%' % still if still else 'lifted'), flush=True)
            ok = ok and t_ok
        if a.kill_pager and not (stats.get('resumed') or {}).get('present'):
            # The second faultline must have continued from the first one's state file.
            print('FAIL: the restarted faultline did not resume (stats resumed: %s)' %
                  stats.get('resumed'))
            ok = False
        dropped = stats.get('stale_pages_dropped') or 0
        # The 10.2 series discards the handed-over blocks itself at ADVISE (so faultline
        # finds nothing stale); with 7.2, faultline punches the preallocated pages out.
        if a.dest_prealloc and not fd_interface and dropped < npages // 2:
            # prealloc=on populated every page before the hand-off; had faultline not punched
            # them out, no fault would fire and the guest would read the destination's zeros.
            print('FAIL: prealloc=on, but faultline dropped only %d stale pages of %d' %
                  (dropped, npages))
            ok = False
        print('%s: QEMU %s post-copy through faultline, %d MiB %s guest: %d/%d data pages '
              'identical, %d low pages written by the running guest, guest bad=%d, %d faults '
              '(p50 %s us, p99 %s us), completed in %.2f s, downtime %s ms%s' %
              ('PASS' if ok else 'FAIL', qver, a.size_mib, a.accel,
               (npages - first_data) - len(data_mismatch), npages - first_data, len(low_diff),
               guest_bad, stats.get('faults', -1),
               (stats.get('fault_latency') or {}).get('p50_ns', 0) // 1000,
               (stats.get('fault_latency') or {}).get('p99_ns', 0) // 1000,
               t_done - t0, downtime_ms,
               ('; destination RAM preallocated (prealloc=on: %d MiB allocated before '
                'migrate): %s before the guest ran' %
                (prealloc_bytes >> 20,
                 'QEMU discarded it at ADVISE, faultline dropped %d stale pages' % dropped
                 if fd_interface else '%d stale pages punched out' % dropped))
               if a.dest_prealloc else '') +
              ('; faultline SIGKILLed mid-post-copy, the destination waited (pager lost), a '
               'new faultline resumed with %s pages already present' %
               (stats.get('resumed') or {}).get('present') if a.kill_pager else '') +
              ('; warm-up: %d rounds (%s pages dropped and fetched again), %s faults after '
               'the switch, every page identical before the destination guest ran' %
               (len(warm.get('rounds') or []),
                '+'.join(str(r.get('evicted')) for r in warm.get('rounds') or []),
                warm.get('faults_after_switch')) if a.warmup else ''), flush=True)
        return 0 if ok else 1
    except Exception as e:  # the logs say more
        print('FAIL: %s (logs in %s)' % (e, work), flush=True)
        for name, _ in procs:
            tail = read(os.path.join(work, name + '.log')).strip().splitlines()[-6:]
            for l in tail:
                print('  [%s] %s' % (name, l))
        return 1
    finally:
        if pub:
            shutil.rmtree(pub, ignore_errors=True)
        if uffd_dev_restore:
            os.chmod('/dev/userfaultfd', uffd_dev_restore[0])
            os.chown('/dev/userfaultfd', -1, uffd_dev_restore[1])
        stop_processes(procs, timeout=10)
        remove_files(src_ram, dst_ram)


if __name__ == '__main__':
    sys.exit(main())
