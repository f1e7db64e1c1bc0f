#!/usr/bin/env python3
"""Side by side on one machine, one run: QEMU's own post-copy vs faultline, same guest.

The guest is qemu-integration/guest (a freestanding PVH kernel). It writes a pattern into every
data page, then loops over three touch phases — sequential scan, uniform random, hot set (10 % of
the pages get 90 % of the touches) — timing each read with rdtsc and reporting each phase on the
serial port (percentiles, max, and a quarter-octave histogram). The mailbox asks for 2^30
rounds: the guest never finishes by itself, whatever the machine's speed. Every QEMU scenario
measures the guest the same way: once the dirty phase is done and the destination is listening,
the driver starts the migration the moment vCPU 0 begins a new round (its previous round's last
histogram line appears on the source's serial port); it counts, from the destination QEMU's own
serial file only, per vCPU the first round of phases printed whole there — the first three
phase lines (seq, random, hot in the guest's order), starting with the phase that was running at
the switch, so the round covers the time memory arrives on every machine (under KVM here a phase
takes ~0.5 s and that is the seq phase vCPU 0 began as the migration started; under TCG phases
on present pages take milliseconds and it is the phase the first faults slowed down). The guest
keeps running until the migration has completed and every vCPU has printed that round, then the
destination is stopped (never waiting for "FLT done"). Scenarios:

  qemu72-plain        Debian's QEMU 7.2 (qemu-system-x86_64 on PATH): migrate, then
                      migrate-start-postcopy over loopback TCP; QEMU's own fault thread
  qemu72-preempt      the same with postcopy-preempt (urgent pages on their own channel)
  qemu10-plain        stock QEMU 10.2.2 (build_qemu.sh --version=10.2 --stock), the same, with
                      postcopy-blocktime on the destination: its own postcopy-latency (mean) and
                      postcopy-latency-dist (log2 µs buckets) are read in every cell
  qemu10-preempt      the same with postcopy-preempt
  qemu10-plain-mfd    qemu10-plain / -preempt with multifd (--multifd-channels) for the
  qemu10-preempt-mfd  pre-copy phase (10.2 allows multifd with postcopy-ram)
  faultline-qemu10    patched QEMU 10.2.2 (build_qemu.sh --version=10.2) with
                      x-postcopy-external-pager: the same VMM and RAM set-up, only the pager
                      differs — faultline source + faultline serve carry guest RAM
  qemu11-plain …      stock QEMU 11.1.1 (build_qemu.sh --version=11.1 --stock): the same four
  qemu11-preempt-mfd  modes as qemu10-* (plain, preempt, plain-mfd, preempt-mfd)
  faultline-qemu11    patched QEMU 11.1.1 (build_qemu.sh --version=11.1) with faultline
  faultline-qemu72    the same with the patched QEMU 7.2 (build_qemu.sh)
  faultline-demo      `faultline demo`: the reference VMM on KVM + faultline (KVM only; its
                      source pauses at the end of the dirty phase and the guest runs one round,
                      on the destination: `faultline demo` cannot loop the guest)

Every QEMU scenario uses the same RAM: memory-backend-file share=on on /dev/shm (4 KiB pages) or
on a hugetlbfs mount (2 MiB pages), and the same accelerator in one run: --accel=kvm runs
`-accel kvm -cpu qemu64` (a CPU model both QEMU versions accept on every KVM here; QEMU 7.2's
`-cpu host` aborts on a kvm_pvm host, MSR 0x10a), --accel=tcg `-accel tcg -cpu max`, and auto
takes kvm when /dev/kvm opens (and FAULTLINE_HIDE_KVM is not set), else tcg. The matrix: RAM
sizes x page sizes x vCPUs x scenarios; a cell that cannot run here says exactly why ("n/a: ...").

Per cell: total time (migrate → destination completed), downtime (QEMU's figure and our own:
the source's STOP event to the destination's RESUME event, QMP timestamps — QEMU 10.x's own
figure is wrong when the switch takes < 1 ms), the guest's touch latency p50/p99/max per phase,
pages requested urgently, QEMU's own postcopy-latency (10.2.2) and faultline's fault_latency (mean,
p50, p99, log2 µs buckets), bytes on the wire, and the verification: every page of the
destination compared byte for byte with the source after the run (QEMU: the two RAM files;
demo: the reference VMM's own check).

Outputs in --out: results.json, results.md (tables per RAM/page/vCPUs, best stock mode of each
QEMU vs faultline, the targets of issue 17 per cell), latency.png (CDFs of the guest's touches),
latency_dist.png (the newest QEMU's postcopy-latency-dist vs faultline's log2_us_dist), both
with gnuplot. The targets compare faultline with the newest QEMU release that ran (11.1.1 when
its cells ran, else 10.2.2) and with 7.2; "faultline" is faultline-qemu11 when it ran, else
faultline-qemu10.
  compare_postcopy.py --quick            256 MiB, 4 KiB pages, 1 vCPU, every default scenario
  compare_postcopy.py                    the full matrix: 1 and 4 GiB, 4 KiB and 2 MiB, 1 and 2 vCPUs
  compare_postcopy.py --replot results.json --out DIR    redraw results.md and the plots
Needs root (userfaultfd, huge pages, mount; /dev/kvm for --accel=kvm). Binaries: --faultline and
--guest (default: bazel-out/k8-opt/bin of this workspace); the QEMUs from --qemu72, --qemu10,
--patched-qemu10, --qemu11, --patched-qemu11, --patched-qemu72 or else
qemu-integration/qemu/build_qemu.sh (cached builds).
"""
import argparse
import json
import math
import mmap
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "qemu-integration", "qemu"))
from harness import (free_port, give_pager, read, remove_files, stop_processes,  # noqa: E402
                     wait_for)  # (helpers shared by the drivers)
from qmp import EventQmp  # noqa: E402  (the shared QMP client)

MAILBOX_GPA = 0x5000
PAGE = 4096
MIB = 1 << 20
HUGE = 2 * MIB
PHASES = ("seq", "random", "hot")
GUEST_ROUNDS = 1 << 30  # the guest loops until the driver stops it
QEMU_FIRMWARE = ("/usr/share/seabios", "/usr/share/qemu")
DEMO_MAX_MIB = 0xFEC00000 // MIB  # 4076: below the I/O APIC and local APIC pages
BUILD_QEMU = os.path.join(REPO, "qemu-integration", "qemu", "build_qemu.sh")

# name -> which QEMU binary, and how it migrates
SCENARIOS = {
    "qemu72-plain": {"bin": "qemu72"},
    "qemu72-preempt": {"bin": "qemu72", "preempt": True},
    "qemu10-plain": {"bin": "qemu10", "blocktime": True},
    "qemu10-preempt": {"bin": "qemu10", "preempt": True, "blocktime": True},
    "qemu10-plain-mfd": {"bin": "qemu10", "multifd": True, "blocktime": True},
    "qemu10-preempt-mfd": {"bin": "qemu10", "preempt": True, "multifd": True, "blocktime": True},
    "faultline-qemu10": {"bin": "patched10", "pager": True},
    "qemu11-plain": {"bin": "qemu11", "blocktime": True},
    "qemu11-preempt": {"bin": "qemu11", "preempt": True, "blocktime": True},
    "qemu11-plain-mfd": {"bin": "qemu11", "multifd": True, "blocktime": True},
    "qemu11-preempt-mfd": {"bin": "qemu11", "preempt": True, "multifd": True, "blocktime": True},
    "faultline-qemu11": {"bin": "patched11", "pager": True},
    "faultline-qemu72": {"bin": "patched72", "pager": True},
    "faultline-demo": {"demo": True},
}
# The newest release (11.1.1) and Debian's 7.2, each stock and through faultline; the 10.2.2
# scenarios stay available (--scenarios).
DEFAULT_SCENARIOS = ("qemu72-plain", "qemu72-preempt", "qemu11-plain", "qemu11-preempt",
                     "qemu11-plain-mfd", "qemu11-preempt-mfd", "faultline-qemu11",
                     "faultline-qemu72", "faultline-demo")
STOCK = {"11.1.1": [s for s in SCENARIOS if s.startswith("qemu11")],
         "10.2.2": [s for s in SCENARIOS if s.startswith("qemu10")],
         "7.2": [s for s in SCENARIOS if s.startswith("qemu72")]}
NEWEST = ("11.1.1", "10.2.2")  # newest first: the release the targets compare with
PAGER = {"11.1.1": "faultline-qemu11", "10.2.2": "faultline-qemu10"}
BINARIES = {  # key -> (option, build_qemu.sh arguments, what)
    "qemu72": ("--qemu72", None, "Debian's QEMU 7.2"),
    "qemu10": ("--qemu10", ["--version=10.2", "--stock"], "stock QEMU 10.2.2"),
    "patched10": ("--patched-qemu10", ["--version=10.2"], "patched QEMU 10.2.2"),
    "qemu11": ("--qemu11", ["--version=11.1", "--stock"], "stock QEMU 11.1.1"),
    "patched11": ("--patched-qemu11", ["--version=11.1"], "patched QEMU 11.1.1"),
    "patched72": ("--patched-qemu72", [], "patched QEMU 7.2"),
}


class NotApplicable(Exception):
    """A cell that cannot run on this machine / with this software; the message says why."""


# ---- small helpers ----

def cpu_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 0


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _copy_rates(cpu, seconds, out):
    """A copy loop pinned to `cpu`: bytes copied per second in each 0.1 s window, into `out`."""
    os.sched_setaffinity(0, {cpu})
    src, dst = bytearray(256 << 10), bytearray(256 << 10)
    rates, n, start = [], 0, time.monotonic()
    last = start
    while last - start < seconds:
        dst[:] = src
        n += 1
        t = time.monotonic()
        if t - last >= 0.1:
            rates.append(n * len(src) / (t - last))
            n, last = 0, t
    out.put((cpu, rates))


def cores_when_busy(alone, busy):
    """How many cores' worth the machine gave with every CPU busy at once: the sum over CPUs of
    each one's median copy rate then, over the median rate of one CPU busy alone. `alone`: one
    CPU's window rates; `busy`: each CPU's window rates. None without figures."""
    one = median(alone)
    if not one or not busy or any(not r for r in busy):
        return None
    return round(sum(median(r) for r in busy) / one, 2)


def cpu_share(seconds=1.0):
    """Measures cores_when_busy() here: the CPU the cells will have. On an idle machine of the
    dev/CI kind it is ~2.0 for its 2 vCPUs; less means something else is running (a stray
    process of ~0.9 core showed as 1.5, with one CPU at half speed at a time) or vCPUs that
    share physical cores. Returns {"cpus", "cores_when_busy"}; cores_when_busy None if it
    could not be measured."""
    import multiprocessing
    cpus = sorted(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def run(which):
        procs = [ctx.Process(target=_copy_rates, args=(c, seconds, q)) for c in which]
        for pr in procs:
            pr.start()
        got = dict(q.get(timeout=seconds + 30) for _ in procs)
        for pr in procs:
            pr.join()
        return [got[c] for c in which]

    try:
        alone = run(cpus[:1])[0]
        busy = run(cpus)
    except Exception:  # noqa: BLE001 — a report without the figure beats no report
        return {"cpus": len(cpus), "cores_when_busy": None}
    return {"cpus": len(cpus), "cores_when_busy": cores_when_busy(alone, busy)}


def cpu_share_text(share):
    """One line for the report: what cpu_share() found (older results have none)."""
    if not share or share.get("cores_when_busy") is None:
        return "CPUs busy at once: not measured"
    return (f"all {share['cpus']} CPUs busy at once gave {share['cores_when_busy']:.2f} cores' "
            "worth (a copy loop pinned to each; measured before the first cell)")


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def mailbox(ram, seed, touches, vcpus, rounds, mode=0xF, churn_permille=0):
    # guest_abi.h: magic, version, ram_size, seed, touches, slow_cycles, mode, rounds, num_cpus,
    # churn_permille, churn_stop
    return struct.pack("<IIQQQQIIIII", 0x4D544C46, 1, ram, seed, touches, 0, mode, rounds, vcpus,
                       churn_permille, 0)


def kvm_state():
    """(usable, why not): /dev/kvm opened read-write, unless FAULTLINE_HIDE_KVM hides it."""
    hide = os.environ.get("FAULTLINE_HIDE_KVM", "")
    if hide not in ("", "0"):
        return False, "FAULTLINE_HIDE_KVM=1 (the host is treated as having no /dev/kvm)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        return True, ""
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"


def accel_argv(accel):
    # qemu64 under KVM: QEMU 7.2's `-cpu host` aborts on this machine's kvm_pvm (MSR 0x10a);
    # both versions accept the default model. Under TCG, max (the guest needs nothing special).
    return ["-accel", "kvm", "-cpu", "qemu64"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]


def qemu_version(path):
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---- the guest's serial report ----

LINE_RE = re.compile(r"^FLT cpu=(\d+) (phase|hist)=(seq|random|hot) round=(\d+) ")


class SerialTail:
    """New whole lines of a growing serial file."""

    def __init__(self, path):
        self.path, self.pos, self.partial = path, 0, b""

    def new_lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [l.decode("latin-1") for l in lines]


class RoundPicker:
    """Per vCPU, the first round of touch phases printed on the destination.

    The destination's serial file holds only what the guest printed there. A vCPU's measured
    round is the first three phase lines (one seq, one random, one hot, in the guest's order)
    printed whole in that file, with their histogram lines: it starts with the phase that was
    running at the switch (its first touches hit pages still on the source; the driver starts
    the migration as vCPU 0 begins a seq phase) and runs on the destination while memory
    arrives. It is complete once a fourth phase line appears (the third phase's histogram lines
    are all out by then)."""

    def __init__(self, vcpus):
        self.vcpus = vcpus
        self.keys, self.lines, self.done = {}, {}, {}
        self.first_seen, self.third_seen = {}, {}

    def feed(self, lines, now):
        for l in lines:
            m = LINE_RE.match(l)
            if not m:
                continue
            cpu, kind, key = int(m.group(1)), m.group(2), (m.group(3), int(m.group(4)))
            if cpu >= self.vcpus or cpu in self.done:
                continue
            keys = self.keys.setdefault(cpu, [])
            if kind == "phase" and key not in keys:
                if len(keys) == 3:
                    self.done[cpu] = now
                    continue
                keys.append(key)
                self.first_seen.setdefault(cpu, now)
                if len(keys) == 3:
                    self.third_seen[cpu] = now
            if key in keys:  # (a histogram line of a phase whose line was on the source: not)
                self.lines.setdefault(cpu, []).append(l)

    def complete(self):
        return len(self.done) == self.vcpus

    def text(self):
        return "\n".join(l for c in sorted(self.lines) for l in self.lines[c])

    def report(self):
        return {"phases": [[f"{n} {r}" for n, r in self.keys.get(c, [])] for c in range(self.vcpus)],
                "first_line_s": round(min(self.first_seen.values()), 3) if self.first_seen else None,
                "round_end_s": round(max(self.third_seen.values()), 3) if self.third_seen else None}


def parse_guest(text):
    """Phase lines and quarter-octave histograms ("hist=" lines) of every CPU, by phase."""
    phases = {}
    for line in text.splitlines():
        m = re.search(r"FLT cpu=(\d+) (phase|hist)=(seq|random|hot) (.*)", line)
        if not m:
            continue
        cpu, kind, name = int(m.group(1)), m.group(2), m.group(3)
        p = phases.setdefault(name, {"touches": 0, "cycles_max": 0, "slow": 0, "bad": 0,
                                     "cycles_total": 0, "hist": {}, "cpus": []})
        kv = dict(x.split("=", 1) for x in m.group(4).split() if "=" in x)
        if kind == "phase":
            p["cpus"].append(cpu)
            p["touches"] += int(kv["touches"])
            p["cycles_max"] = max(p["cycles_max"], int(kv["cycles_max"]))
            p["cycles_total"] = max(p["cycles_total"], int(kv["cycles_total"]))
            p["slow"] += int(kv["slow"])
            p["bad"] += int(kv["bad"])
        else:
            for item in kv.get("q", "").split(","):
                if ":" in item:
                    b, n = item.split(":")
                    p["hist"][b] = p["hist"].get(b, 0) + int(n)
    return phases


def bucket_upper(i):
    """Upper bound (cycles) of quarter-octave bucket i (guest_abi.h)."""
    b, q = divmod(int(i), 4)
    return (1 << b) if b < 2 else (1 << b) * (4 + q + 1) // 4


def percentile(hist, frac, cap):
    total = sum(hist.values())
    if total == 0:
        return 0
    seen = 0
    for i in sorted(hist, key=int):
        seen += hist[i]
        if seen >= frac * total:
            return min(bucket_upper(i), cap)
    return cap


def merged_hist(phases):
    h = {}
    for p in phases.values():
        for b, n in p["hist"].items():
            h[b] = h.get(b, 0) + n
    return h


def summarize_guest(phases, khz):
    """µs figures per phase and over all destination touches (p50/p99 are bucket upper bounds)."""
    def us(c):
        return round(c * 1000.0 / khz, 1) if khz else None
    out = {}
    for name, p in phases.items():
        out[name] = {"touches": p["touches"], "p50_us": us(percentile(p["hist"], 0.5, p["cycles_max"])),
                     "p99_us": us(percentile(p["hist"], 0.99, p["cycles_max"])),
                     "max_us": us(p["cycles_max"]), "slow": p["slow"], "bad": p["bad"]}
    allh = merged_hist(phases)
    mx = max((p["cycles_max"] for p in phases.values()), default=0)
    out["all"] = {"touches": sum(allh.values()), "p50_us": us(percentile(allh, 0.5, mx)),
                  "p99_us": us(percentile(allh, 0.99, mx)), "max_us": us(mx),
                  "bad": sum(p["bad"] for p in phases.values())}
    return out


# ---- page-for-page comparison of two RAM files ----

def compare_ram(src_path, dst_path, size, data_start):
    """Byte comparison page for page; pages below data_start (the guest's image, stacks and
    status block, which the running guest keeps writing) are counted separately."""
    chunk = 8 * MIB
    data_bad, low_bad, zero_data = 0, 0, 0
    with open(src_path, "rb") as fs, open(dst_path, "rb") as fd:
        ms = mmap.mmap(fs.fileno(), size, prot=mmap.PROT_READ)
        md = mmap.mmap(fd.fileno(), size, prot=mmap.PROT_READ)
        try:
            for off in range(0, size, chunk):
                if ms[off:off + chunk] == md[off:off + chunk]:
                    continue
                for p in range(off, min(off + chunk, size), PAGE):
                    if ms[p:p + PAGE] != md[p:p + PAGE]:
                        if p < data_start:
                            low_bad += 1
                        else:
                            data_bad += 1
                            if md[p:p + PAGE] == bytes(PAGE):
                                zero_data += 1
        finally:
            ms.close()
            md.close()
    return {"pages": size // PAGE, "data_pages": (size - data_start) // PAGE,
            "data_mismatches": data_bad, "low_pages_rewritten": low_bad,
            "data_pages_zero_on_dest": zero_data}


# ---- huge pages (raised for 2 MiB cells, restored afterwards) ----

class HugePages:
    def __init__(self, work):
        self.orig = None
        self.mount = None
        self.work = work
        self.touched = 0  # vm.nr_hugepages when the pool was last touched whole

    def ensure(self, pages):
        """At least `pages` free 2 MiB pages and a hugetlbfs mount; returns the mount or raises
        NotApplicable with the reason."""
        if os.geteuid() != 0:
            raise NotApplicable("2 MiB pages need root (vm.nr_hugepages, mount -t hugetlbfs)")
        path = "/proc/sys/vm/nr_hugepages"
        cur = int(read(path))
        if self.orig is None:
            self.orig = cur
        free = meminfo("HugePages_Free")
        if free < pages:
            with open(path, "w") as f:
                f.write(str(cur + pages - free))
            free = meminfo("HugePages_Free")
            if free < pages:
                raise NotApplicable(f"only {free} of {pages} 2 MiB pages could be reserved "
                                    f"(vm.nr_hugepages)")
        if self.mount is None:
            m = tempfile.mkdtemp(prefix="flt-hugetlbfs-", dir=self.work)
            r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "nodev", m],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise NotApplicable("mount -t hugetlbfs failed: " + r.stderr.strip())
            self.mount = m
        total = meminfo("HugePages_Total")
        if total != self.touched:
            self.touch_free()
            self.touched = total
        return self.mount

    def touch_free(self):
        """Writes every 4 KiB of every free huge page once (a hugetlbfs file over all of them,
        then removed: the pages go back to the pool). On a machine whose hypervisor backs guest
        memory lazily, memory fresh from vm.nr_hugepages costs it a fault per 4 KiB at its
        first touch — ~7 ms per 2 MiB page here — and the first cell after a reservation paid
        that, whichever scenario it was (a 4x slower run, 2026-12-06). Outside every cell's
        clock; the pool's pages stay touched until the reservation is given back."""
        free = meminfo("HugePages_Free")
        path = os.path.join(self.mount, "touch-the-pool")
        size = free * 2 * MIB
        try:
            with open(path, "w+b") as f:
                f.truncate(size)
                m = mmap.mmap(f.fileno(), size)
                for off in range(0, size, 4096):
                    m[off] = 1
                m.close()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def restore(self):
        if self.mount:
            subprocess.run(["umount", self.mount], check=False)
            os.rmdir(self.mount)
            self.mount = None
        if self.orig is not None:
            with open("/proc/sys/vm/nr_hugepages", "w") as f:
                f.write(str(self.orig))
            self.orig = None


# ---- QEMU scenarios (stock post-copy, and the patched QEMU with faultline as its pager) ----

def bulk_channels(args, page):
    return args.bulk_channels_2m if page == "2M" else args.bulk_channels


def trim_latency(fl):
    if not fl:
        return None
    return {k: fl.get(k) for k in ("count", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "max_ns",
                                   "log2_us_dist")}


ENGINE_KEYS = ("pages", "urgent_pages", "bulk_pages", "zero_pages", "faults", "minor_faults",
               "duplicate_faults", "urgent_requests", "bulk_requests", "bytes_received", "seconds",
               "eexist", "running_after_listen_ms")
SRC_RAM_KEYS = ("transferred", "normal", "duplicate", "postcopy-requests", "postcopy-bytes",
                "precopy-bytes", "multifd-bytes", "mbps", "pages-per-second")


def run_qemu(args, work, cell, huge):
    scenario, size_mib, page, vcpus = cell["scenario"], cell["size_mib"], cell["page"], cell["vcpus"]
    sc = SCENARIOS[scenario]
    pager = sc.get("pager", False)
    qemu = args.bins.get(sc["bin"])
    if not qemu:
        raise NotApplicable(args.bin_why.get(sc["bin"], "no QEMU binary"))
    size = size_mib * MIB
    ramdir = huge.ensure(2 * size // HUGE + 4) if page == "2M" else "/dev/shm"
    tag = f"flt-bench-{os.getpid()}"
    src_ram, dst_ram = os.path.join(ramdir, tag + "-src"), os.path.join(ramdir, tag + "-dst")
    # The pc machine puts RAM above 3 GiB (when it has >= 3.5 GiB) at 4 GiB; the guest maps
    # only the low 4 GiB, so its workload covers the low part (the rest migrates as zeros).
    guest_ram = 3 << 30 if size >= 0xE0000000 else size
    procs = []

    def spawn(name, argv):
        log = open(os.path.join(work, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    def qemu_argv(name, ram, extra):
        # -smp: the guest's boot CPU starts the others itself (INIT/SIPI) when the mailbox
        # asks for them.
        argv = [qemu] + accel_argv(args.accel) + [
            "-smp", str(vcpus), "-m", f"{size_mib}M", "-nodefaults",
            "-vga", "none", "-display", "none", "-no-reboot",
            "-object", f"memory-backend-file,id=mem,size={size_mib}M,mem-path={ram},share=on",
            "-machine", "pc,memory-backend=mem", "-kernel", args.guest,
            "-serial", "file:" + os.path.join(work, name + ".serial"),
            "-qmp", "unix:%s,server=on,wait=off" % os.path.join(work, name + ".qmp")]
        if sc["bin"] != "qemu72":  # a source build has no firmware of its own
            for fw in QEMU_FIRMWARE:
                argv += ["-L", fw]
        if args.qemu_trace:  # QEMU's trace events with timestamps, in <work>/<name>.log
            argv += ["-msg", "timestamp=on"]
            for ev in args.qemu_trace.split(","):
                argv += ["-trace", ev]
        return argv + extra

    def alive():
        for name, p in procs:
            if name.endswith("qemu") and p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode}")

    try:
        remove_files(src_ram, dst_ram)
        spawn("src-qemu", qemu_argv("src", src_ram, ["-S"]))
        src = EventQmp(os.path.join(work, "src.qmp"))
        with open(src_ram, "r+b") as f:  # the mailbox, before the guest runs (mmap: hugetlbfs)
            m = mmap.mmap(f.fileno(), 2 * HUGE)
            mb = mailbox(guest_ram, args.seed, args.touches, vcpus, GUEST_ROUNDS)
            m[MAILBOX_GPA:MAILBOX_GPA + len(mb)] = mb
            m.close()
        src.ok("cont")
        serial = os.path.join(work, "src.serial")
        # The whole line (its end read too): a serial file read mid-line once gave "abi=v".
        boot = wait_for(lambda: re.search(r"FLT cpu=0 boot .*data=0x([0-9a-f]+)-.*abi=(\w+)\s",
                                          read(serial)), 120, "the guest to boot on the source")
        if boot.group(2) != "vmm":
            raise RuntimeError("the guest did not see the mailbox: " + boot.group(0))
        data_start = int(boot.group(1), 16)
        wait_for(lambda: read(serial).count("phase=dirty") >= vcpus, 1800,
                 "the guest's dirty phase (every vCPU)")

        caps = ["postcopy-ram"]
        if sc.get("preempt"):
            caps.append("postcopy-preempt")
        if sc.get("multifd"):
            caps.append("multifd")
        extra = ["-incoming", "defer"]
        serve = None
        nbulk = bulk_channels(args, page)
        if pager:
            caps += ["x-ignore-shared", "x-postcopy-external-pager"]
            token, fl_port = secrets.token_hex(32), free_port()
            sock = os.path.join(work, "pager.sock")
            region = f"mem={src_ram}:{size_mib}M" + (":2M" if page == "2M" else "")
            spawn("faultline-source", [args.faultline, "source", f"--listen=127.0.0.1:{fl_port}",
                                       "--token=" + token, "--region=" + region]
                  + args.faultline_flag)  # a flag the source has no use for is ignored
            wait_for(lambda: "serving" in read(os.path.join(work, "faultline-source.log")), 60,
                     "faultline source")
            serve = spawn("faultline-serve", [args.faultline, "serve", "--handoff=" + sock,
                                              f"--connect=127.0.0.1:{fl_port}", "--token=" + token,
                                              "--state_dir=" + os.path.join(work, "state"),
                                              f"--bulk_channels={nbulk}", "--progress=false"]
                          + args.faultline_flag)
            wait_for(lambda: "waiting for a VMM" in read(os.path.join(work, "faultline-serve.log")),
                     30, "faultline serve")
            # The 10.2 series (v3) takes the pager's connection as an fd over QMP and hands
            # over at ADVISE, gated by switchover-ack; the 7.2 series takes a socket path.
            fd_interface = sc["bin"] != "patched72"
            if fd_interface:
                caps += ["return-path", "switchover-ack"]
            else:
                extra += ["-global", "migration.x-postcopy-external-pager-socket=" + sock]
        spawn("dst-qemu", qemu_argv("dst", dst_ram, extra))
        dst = EventQmp(os.path.join(work, "dst.qmp"))
        if pager and fd_interface:
            give_pager(dst, sock, "qemu-10.2")
        dcaps = caps + (["postcopy-blocktime"] if sc.get("blocktime") else [])
        dst.ok("migrate-set-capabilities",
               capabilities=[{"capability": c, "state": True} for c in dcaps])
        src.ok("migrate-set-capabilities",
               capabilities=[{"capability": c, "state": True} for c in caps])
        if sc.get("multifd"):
            for q in (src, dst):
                q.ok("migrate-set-parameters", **{"multifd-channels": args.multifd_channels})
        port = free_port()
        dst.ok("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")

        # Start right as vCPU 0 begins a round (a seq phase): its hot phase's histogram is out.
        stail = SerialTail(serial)
        stail.new_lines()
        trigger = None
        deadline = time.time() + 300
        while trigger is None:
            for l in stail.new_lines():
                m = re.match(r"FLT cpu=0 hist=hot round=(\d+) ", l)
                if m:
                    trigger = int(m.group(1)) + 1
                    break
            else:
                if time.time() > deadline:
                    raise TimeoutError("vCPU 0 ended no round on the source within 300 s")
                alive()
                time.sleep(0.002)
        t0 = time.time()
        src.ok("migrate", uri=f"tcp:127.0.0.1:{port}")
        src.cmd("migrate-start-postcopy")  # with the pager the switch may already have happened
        # Until the destination has completed and every vCPU has printed its measured round.
        tail, picker = SerialTail(os.path.join(work, "dst.serial")), RoundPicker(vcpus)
        t_done, dinfo = None, None
        while True:
            now = time.time()
            picker.feed(tail.new_lines(), now - t0)
            if t_done is None:
                dinfo = dst.ok("query-migrate")
                st = dinfo.get("status")
                if st == "completed":
                    t_done = time.time()
                elif st == "failed":
                    raise RuntimeError("destination migration failed")
                elif now - t0 > 1800:
                    raise TimeoutError("the destination migration did not complete in 1800 s")
            elif picker.complete():
                break
            elif now - t_done > 600:
                raise TimeoutError("no whole round of touch phases on the destination within "
                                   f"600 s after completion ({picker.report()})")
            alive()
            time.sleep(0.02)
        dst.ok("stop")
        info = wait_for(lambda: (lambda i: i if i.get("status") in ("completed", "failed")
                                 else None)(src.ok("query-migrate")), 120,
                        "the source migration to complete")
        src_state = src.ok("query-status")["status"]
        if src_state not in ("postmigrate", "paused", "finish-migrate"):
            raise RuntimeError(f"source is {src_state}, not paused")
        # Our own downtime: the source's STOP (switch-over) to the destination's RESUME, both
        # QEMU's event timestamps (CLOCK_REALTIME of this host).
        t_stop, t_resume = src.first_event("STOP", t0 - 1), dst.first_event("RESUME", t0 - 1)

        ram = info.get("ram", {})
        events = sorted((round(t - t0, 4), side, e) for side, q in (("src", src), ("dst", dst))
                        for e, t, _ in q.events if t >= t0 - 1)
        res = {"events": events, "total_seconds": round(t_done - t0, 3),
               "downtime_ms": round((t_resume - t_stop) * 1000, 2) if t_stop and t_resume else None,
               "downtime_ms_qemu": info.get("downtime"),
               "switch_seconds": round(t_stop - t0, 3) if t_stop else None,
               "urgent_requests": ram.get("postcopy-requests"),
               "bytes_on_wire": ram.get("transferred", 0),
               "src_ram": {k: ram[k] for k in SRC_RAM_KEYS if k in ram},
               "data_start": data_start, "guest_ram_used": guest_ram, "qemu": qemu,
               "caps": caps, "dest_caps": dcaps}
        if sc.get("multifd"):
            res["multifd_channels"] = args.multifd_channels
        if sc.get("blocktime"):
            res["qemu_latency"] = {
                "mean_ns": dinfo.get("postcopy-latency"),
                "vcpu_ns": dinfo.get("postcopy-vcpu-latency"),
                "non_vcpu_ns": dinfo.get("postcopy-non-vcpu-latency"),
                "log2_us_dist": dinfo.get("postcopy-latency-dist"),
                "blocktime_ms": dinfo.get("postcopy-blocktime"),
                "vcpu_blocktime_ms": dinfo.get("postcopy-vcpu-blocktime")}
        if pager:
            serve.wait(timeout=120)
            log = read(os.path.join(work, "faultline-serve.log"))
            start = re.search(r"^\{$", log, re.M)  # serve prints its stats last
            stats = json.loads(log[start.start():]) if start else {}
            res["bulk_channels"] = nbulk
            res["urgent_requests"] = stats.get("urgent_requests")
            res["qemu_postcopy_requests"] = ram.get("postcopy-requests")
            res["bytes_on_wire"] += stats.get("bytes_received", 0)
            res["qemu_stream_bytes"] = ram.get("transferred", 0)
            res["fault_latency"] = trim_latency(stats.get("fault_latency"))
            res["fault_latency_by_kind"] = {
                k: trim_latency(v) for k, v in (stats.get("fault_latency_by_kind") or {}).items()}
            res["engine"] = {k: stats.get(k) for k in ENGINE_KEYS}
        res["guest"] = parse_guest(picker.text())
        res["guest_round"] = dict(picker.report(), cpu0_round_at_migrate=trigger)
        res["verify"] = compare_ram(src_ram, dst_ram, size, data_start)
        gbad = sum(p["bad"] for p in res["guest"].values())
        res["verified"] = (res["verify"]["data_mismatches"] == 0 and gbad == 0 and
                           all(p in res["guest"] for p in PHASES))
        return res
    except Exception as e:
        tails = []
        for name, _ in procs:
            tails += [f"[{name}] {l}" for l in read(os.path.join(work, name + ".log")).splitlines()[-4:]]
        raise RuntimeError(f"{e}\n" + "\n".join(tails)) from e
    finally:
        stop_processes(procs)
        remove_files(src_ram, dst_ram)


# ---- faultline demo (reference VMM) ----

def run_demo(args, work, cell, huge):
    if args.accel != "kvm":
        raise NotApplicable("the reference VMM runs its guest on /dev/kvm only; this run is TCG ("
                            + args.accel_why + ")")
    if cell["page"] == "2M":
        raise NotApplicable("the reference VMM has no hugetlbfs RAM (demo --dest_ram: memfd, "
                            "anon, guest_memfd)")
    # The reference VMM maps RAM over the local APIC page (0xfee00000), which KVM traps as
    # MMIO: a 4096 MiB demo guest's dirty phase exits there (KVM_EXIT_MMIO). RAM is capped
    # below the I/O APIC (0xfec00000 = 4076 MiB) and the table says so.
    demo_mib = min(cell["size_mib"], DEMO_MAX_MIB)
    out = os.path.join(work, "demo.json")
    env = dict(os.environ, FAULTLINE_GUEST_ELF=args.guest)
    nbulk = bulk_channels(args, cell["page"])
    r = subprocess.run([args.faultline, "demo", f"--size={demo_mib}M",
                        f"--vcpus={cell['vcpus']}", f"--guest_touches={args.touches}",
                        f"--bulk_channels={nbulk}",
                        "--progress=false", "--guest_serial", f"--stats_json={out}"]
                       + args.faultline_flag,
                       env=env, capture_output=True, text=True, timeout=3600)
    with open(os.path.join(work, "demo.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError("faultline demo failed:\n" + "\n".join((r.stdout + r.stderr).splitlines()[-8:]))
    with open(out) as f:
        j = json.load(f)
    e = j["engine"]
    dest_lines = "\n".join(l.split("] ", 1)[1] for l in r.stdout.splitlines()
                           if l.strip().startswith("[dest guest]"))
    guest = parse_guest(dest_lines)
    return {"total_seconds": j["total_seconds"], "downtime_ms": j["downtime_ms"],
            "downtime_ms_qemu": None, "urgent_requests": e["urgent_requests"],
            "bytes_on_wire": e["bytes_received"], "bulk_channels": nbulk,
            "fault_latency": trim_latency(e["fault_latency"]),
            "engine": {k: e.get(k) for k in ENGINE_KEYS},
            "tsc_khz": j.get("tsc_khz"), "guest": guest, "demo_ram_mib": demo_mib,
            "guest_round": {"phases": [["seq 0", "random 0", "hot 0"]] * cell["vcpus"],
                            "note": "the demo's source pauses at the end of the dirty phase; "
                                    "its one round runs on the destination from the switch on"},
            "verify": {"pages": j["verified_pages"], "data_mismatches": j["mismatches"]},
            "verified": (j["mismatches"] == 0 and j["guest_bad_reads"] == 0 and
                         all(p in guest for p in PHASES))}


# ---- figures per cell ----

def ok_cell(c):
    return c is not None and "na" not in c and "error" not in c


def bucket_mean_us(dist):
    """A mean from log2 µs buckets, one estimator for every pager: bucket i ([2^i, 2^(i+1)) µs)
    counts at 2^i / ln 2 — its mean when faults spread evenly on a log scale within it —, bucket
    0 ([0, 2) µs) at 1 µs. The buckets are all both pagers report alike: QEMU's own mean is
    computed another way (bucket_floor_us)."""
    n = sum(dist or [])
    if not n:
        return None
    return sum(c * (1.0 if i == 0 else (1 << i) / math.log(2)) for i, c in enumerate(dist)) / n


def bucket_floor_us(dist):
    """The least mean the buckets allow (every fault at its bucket's lower edge). QEMU's
    `postcopy-latency` (10.1 and later; 11.1.1 alike) can fall below it: it adds each vCPU's
    blocked time when the vCPU's last pending fault is resolved (from that fault's start; a
    fault resolved while another on the same vCPU is pending adds none) and divides by every
    fault (migration/postcopy-ram.c, fill_destination_postcopy_migration_info); its buckets
    count every fault's own latency."""
    n = sum(dist or [])
    if not n:
        return None
    return sum(c * (1 << i) for i, c in enumerate(dist) if i > 0) / n


def figures(c, khz):
    """The numbers the tables and targets use, from one cell (None where it has none)."""
    g = summarize_guest(c.get("guest") or {}, c.get("tsc_khz") or khz)
    ql = c.get("qemu_latency") or {}
    fl = c.get("fault_latency") or {}
    eng = c.get("engine") or {}
    if eng.get("seconds"):
        rate = eng.get("bytes_received", 0) / eng["seconds"] / 1e6
    elif c.get("total_seconds"):
        rate = (c.get("src_ram") or {}).get("transferred", 0) / c["total_seconds"] / 1e6
    else:
        rate = None
    k = c.get("tsc_khz") or khz
    phases = c.get("guest") or {}
    round_s = (sum(p.get("cycles_total", 0) for p in phases.values()) / (k * 1000.0)
               if k and all(p in phases for p in PHASES) else None)
    return {"total": c.get("total_seconds"), "down": c.get("downtime_ms"), "round_s": round_s,
            "down_qemu": c.get("downtime_ms_qemu"),
            "p99": g["all"]["p99_us"], "max": g["all"]["max_us"], "p50": g["all"]["p50_us"],
            "phase_p99": [g[p]["p99_us"] if p in g else None for p in PHASES],
            "urgent": c.get("urgent_requests"),
            "qemu_mean_us": ql["mean_ns"] / 1000 if ql.get("mean_ns") is not None else None,
            "fl_mean_us": fl["mean_ns"] / 1000 if fl.get("count") else None,
            "bucket_mean_us": bucket_mean_us(ql.get("log2_us_dist") or fl.get("log2_us_dist")),
            "fl_p50_us": fl["p50_ns"] / 1000 if fl.get("count") else None,
            "fl_p99_us": fl["p99_ns"] / 1000 if fl.get("count") else None,
            "rate_mbs": rate}


# ---- report ----

def fmt_us(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def fmt_ms(v):
    return "–" if v is None else (f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms")


def fmt_s(v):
    return "–" if v is None else f"{v:.2f} s"


def fmt_bytes(b):
    return f"{b / (1 << 30):.2f} GiB" if b >= (1 << 30) else f"{b / MIB:.0f} MiB"


def error_line(text):
    """The most telling line of an error: QEMU's own message if it printed one."""
    lines = text.splitlines() or [""]
    told = [l for l in lines if ("qemu-system-x86_64:" in l or "error:" in l)
            and "terminating on signal" not in l]
    return (told[-1].split("] ", 1)[-1] if told else lines[0])[:200].replace("|", "/")


def size_name(mib):
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def page_name(page):
    return "4 KiB" if page == "4K" else "2 MiB"


class GroupKey(tuple):
    """(size MiB, page, vCPUs), sorted with 4 KiB pages before 2 MiB."""

    def _order(self):
        return (self[0], self[1] != "4K", self[2])

    def __lt__(self, other):
        return self._order() < other._order()


def groups(results):
    """{(size, page, vCPUs): {scenario: [its runs, in order]}} (one run each without --repeat)."""
    out = {}
    for c in results:
        key = GroupKey((c["size_mib"], c["page"], c["vcpus"]))
        out.setdefault(key, {}).setdefault(c["scenario"], []).append(c)
    return out


def ran(runs):
    """The runs of a scenario in one cell that ran (not n/a, no error)."""
    return [c for c in (runs or []) if ok_cell(c)]


def median(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def run_figures(runs, khz):
    """figures() of a scenario's runs in one cell: each figure's median over the runs that ran
    (the run's own figures when there is one), or None when none ran. The median of each
    column on its own: with --repeat the table's total and downtime may come from different
    runs, as a noisy machine's medians should."""
    each = [figures(c, khz) for c in ran(runs)]
    if len(each) <= 1:
        return each[0] if each else None
    out = {}
    for k in each[0]:
        if k == "phase_p99":
            out[k] = [median(f[k][i] for f in each) for i in range(len(PHASES))]
        else:
            out[k] = median(f[k] for f in each)
    if out["urgent"] is not None:
        out["urgent"] = round(out["urgent"])
    return out


def group_title(key):
    size, page, vcpus = key
    return f"{size_name(size)}, {page_name(page)} pages, {vcpus} vCPU{'s' if vcpus > 1 else ''}"


def cell_table(d, khz):
    head = ("| scenario | total | downtime: own / QEMU's | touch p99 (seq / random / hot) | touch p99 "
            "all | worst touch | round time | urgent requests | QEMU postcopy-latency mean | "
            "faultline fault latency mean / p50 / p99 | stream | verified |")
    rows = [head, "|" + "---|" * 12]
    for name, c in ((f"{n} #{i + 1}" if len(runs) > 1 else n, c)
                    for n, runs in d.items() for i, c in enumerate(runs)):
        lead = f"| {name} |"
        if "na" in c:
            rows.append(f"{lead} n/a: {c['na']} |" + " |" * 10)
            continue
        if "error" in c:
            rows.append(f"{lead} error: {error_line(c['error'])} |" + " |" * 10)
            continue
        f = figures(c, khz)
        fl = (f"{fmt_us(f['fl_mean_us'])} / {fmt_us(f['fl_p50_us'])} / {fmt_us(f['fl_p99_us'])}"
              if f["fl_mean_us"] is not None else "–")
        v = c["verify"]
        ver = (f"{'yes' if c['verified'] else 'NO'}: {v['data_mismatches']} mismatches / "
               f"{v.get('data_pages', v['pages']):,} pages")
        extra = f" ({c['bulk_channels']} channels)" if c.get("bulk_channels", 1) > 1 else ""
        rate = "–" if f["rate_mbs"] is None else f"{f['rate_mbs']:.0f} MB/s"
        rows.append(f"{lead} {fmt_s(f['total'])} | {fmt_ms(f['down'])} / "
                    f"{'–' if f['down_qemu'] is None else str(f['down_qemu']) + ' ms'} | "
                    f"{' / '.join(fmt_us(x) for x in f['phase_p99'])} | {fmt_us(f['p99'])} | "
                    f"{fmt_us(f['max'])} | {fmt_s(f['round_s'])} | "
                    f"{f['urgent'] if f['urgent'] is not None else '–'} | "
                    f"{fmt_us(f['qemu_mean_us'])} | {fl} | "
                    f"{rate}{extra} | "
                    f"{ver} |")
    return "\n".join(rows) + "\n"


def best(d, names, key, khz):
    """(value, scenario) of the lowest figure `key` among the cells `names` that ran."""
    figs = [(run_figures(d.get(n), khz), n) for n in names]
    vals = [(f[key], n) for f, n in figs if f is not None and f[key] is not None]
    return min(vals) if vals else (None, None)


def anchor(results):
    """(newest QEMU release whose stock cells ran, the faultline scenario compared with it):
    11.1.1 and faultline-qemu11 when 11.1.1 ran (faultline-qemu10 if the patched 11.1.1 did
    not), else 10.2.2 and faultline-qemu10. With no stock cell at all (a run of faultline's
    scenarios only), the newest release whose faultline scenario ran."""
    ran_names = {c["scenario"] for c in results if ok_cell(c)}
    newest = next((v for v in NEWEST if ran_names & set(STOCK[v])), None)
    if newest is None:
        newest = next((v for v in NEWEST if PAGER[v] in ran_names), NEWEST[-1])
    main = PAGER[newest] if PAGER[newest] in ran_names else PAGER[NEWEST[-1]]
    return newest, main


METRICS = (  # key, label, formatter, target (None: shown, not a target)
    ("total", "total", fmt_s),
    ("down", "downtime (own)", fmt_ms),
    ("p99", "touch p99 (all)", fmt_us),
    ("max", "worst touch", fmt_us),
    ("round_s", "guest round time", fmt_s),
    ("urgent", "urgent requests", lambda v: "–" if v is None else f"{v:,}"),
    ("qemu_mean_us", "QEMU postcopy-latency mean", fmt_us),
    ("fl_mean_us", "faultline fault latency mean", fmt_us),
)


def best_table(d, khz):
    """Best stock mode of each QEMU that ran (per column) vs each faultline scenario."""
    rows = ["| | " + " | ".join(m[1] for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for ver, names in STOCK.items():
        if not any(run_figures(d.get(n), khz) for n in names):
            continue
        cells = []
        for key, _, fmt in METRICS:
            v, n = best(d, names, key, khz)
            cells.append("–" if v is None else f"{fmt(v)} ({n.split('-', 1)[1]})")
        rows.append(f"| best stock QEMU {ver} | " + " | ".join(cells) + " |")
    for name in ("faultline-qemu11", "faultline-qemu10", "faultline-qemu72"):
        f = run_figures(d.get(name), khz)
        if f is not None:
            rows.append(f"| {name} | " + " | ".join(fmt(f[k]) for k, _, fmt in METRICS) + " |")
    return "\n".join(rows) + "\n"


def targets(d, khz, newest="10.2.2", main="faultline-qemu10"):
    """Issue 17's end-to-end targets for `main` in one cell, against the best stock modes of
    the `newest` release and of 7.2: [(name, met, text)]."""
    runs = d.get(main)
    ff = run_figures(runs, khz)
    if ff is None:
        why = f"no {main} cell" if not runs else ("n/a" if "na" in runs[0] else "error")
        return [("all", None, why)]
    out = []
    for ver in (newest, "7.2"):
        names = STOCK[ver]
        bt, bn = best(d, names, "total", khz)
        if bt is None:
            out.append((f"total ≤ 0.9× best {ver}", None, f"no stock {ver} cell ran"))
        else:
            out.append((f"total ≤ 0.9× best {ver}", ff["total"] <= 0.9 * bt,
                        f"{ff['total']:.2f} s vs {bt:.2f} s ({bn}): {ff['total'] / bt:.2f}×"))
    stock = STOCK[newest] + STOCK["7.2"]
    for key, label, fmt in (("down", "downtime no worse", fmt_ms),
                            ("p99", "touch p99 no worse", fmt_us),
                            ("max", "worst touch no worse", fmt_us)):
        bv, bn = best(d, stock, key, khz)
        if bv is None or ff[key] is None:
            out.append((label, None, "no figure"))
        else:
            out.append((label, ff[key] <= bv, f"{fmt(ff[key])} vs {fmt(bv)} ({bn})"))
    qm, qn = best(d, STOCK[newest], "qemu_mean_us", khz)
    if qm is None or ff["fl_mean_us"] is None:
        out.append(("fault-latency mean ≤ ¼ QEMU's", None, "no figure"))
    else:
        out.append(("fault-latency mean ≤ ¼ QEMU's", ff["fl_mean_us"] <= qm / 4,
                    f"{fmt_us(ff['fl_mean_us'])} vs {fmt_us(qm)} ({qn}): 1/{qm / ff['fl_mean_us']:.1f}"
                    if ff["fl_mean_us"] else f"0 vs {fmt_us(qm)}"))
    # The same comparison from the two distributions with one estimator (bucket_mean_us).
    qb, qbn = best(d, STOCK[newest], "bucket_mean_us", khz)
    fb = ff["bucket_mean_us"]
    if qb is None or fb is None:
        out.append(("… from the buckets, one estimator", None, "no figure"))
    else:
        out.append(("… from the buckets, one estimator", fb <= qb / 4,
                    f"{fmt_us(fb)} vs {fmt_us(qb)} ({qbn}): 1/{qb / fb:.1f}"))
    return out


def met_word(m):
    return "n/a" if m is None else ("**met**" if m else "not met")


def dist_of(runs):
    """A scenario's log2 µs fault-latency buckets in one cell, summed over its runs."""
    dists = [(c.get("qemu_latency") or {}).get("log2_us_dist") or
             (c.get("fault_latency") or {}).get("log2_us_dist") for c in ran(runs)]
    dists = [x for x in dists if x]
    if not dists:
        return None
    return [sum(x[i] for x in dists if i < len(x)) for i in range(max(len(x) for x in dists))]


def bucket_label(n):
    lo = 1 << n
    def u(x):
        return f"{x // 1000} ms" if x >= 1000 and x % 1000 == 0 else (
            f"{x / 1000:.1f} ms" if x >= 1000 else f"{x} µs")
    if n == 0:
        return "< 2 µs"
    return f"≥ {u(lo)}" if n == 23 else f"{u(lo)} – {u(2 * lo)}"


def dist_table(d):
    names = [n for n in d if dist_of(d[n])]
    if not names:
        return ""
    dists = {n: dist_of(d[n]) for n in names}
    used = [i for i in range(24) if any(i < len(x) and x[i] for x in dists.values())]
    if not used:
        return ""
    rows = ["| fault latency bucket | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i in range(min(used), max(used) + 1):
        rows.append(f"| {bucket_label(i)} | " +
                    " | ".join(str(dists[n][i]) if i < len(dists[n]) else "0" for n in names) + " |")
    rows.append("| total | " + " | ".join(f"{sum(dists[n]):,}" for n in names) + " |")
    rows.append("| mean from the buckets ¹ | " +
                " | ".join(fmt_us(bucket_mean_us(dists[n])) for n in names) + " |")
    rows.append("| own mean (median of runs) ² | " + " | ".join(
        fmt_us(median(own_mean_us(c) for c in ran(d[n]))) for n in names) + " |")
    out = "\n".join(rows) + "\n"
    out += ("\n¹ every bucket at 2^i / ln 2 µs, one estimator for both pagers. ² QEMU: "
            "`postcopy-latency`; faultline: `fault_latency.mean_ns`.")
    low = []
    for n in names:
        for c in ran(d[n]):
            ql = c.get("qemu_latency") or {}
            floor = bucket_floor_us(ql.get("log2_us_dist"))
            if ql.get("mean_ns") is not None and floor and ql["mean_ns"] / 1000 < floor:
                low.append(f"{n} run {c.get('run', 1)} ({ql['mean_ns'] / 1000:.0f} µs < "
                           f"{floor:.0f} µs)")
    if low:
        out += (" QEMU's own mean is below the least its own buckets allow (every fault at "
                "its bucket's lower edge) in " + ", ".join(low) + ": it adds a vCPU's blocked "
                "time once however many of its faults overlap, and divides by every fault.")
    return out + "\n"


def own_mean_us(c):
    q = (c.get("qemu_latency") or {}).get("mean_ns")
    f = c.get("fault_latency") or {}
    if q is not None:
        return q / 1000
    return f["mean_ns"] / 1000 if f.get("count") else None


def targets_summary(results, khz):
    g = groups(results)
    newest, main = anchor(results)
    names = None
    rows = []
    for key in sorted(g):
        t = targets(g[key], khz, newest, main)
        if names is None and len(t) > 1:
            names = [x[0] for x in t]
        rows.append((key, t))
    if not names:
        return ""
    out = ["| RAM | page | vCPUs | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (size, page, vcpus), t in rows:
        if len(t) == 1:
            out.append(f"| {size_name(size)} | {page_name(page)} | {vcpus} | {t[0][2]} |" +
                       " |" * (len(names) - 1))
            continue
        out.append(f"| {size_name(size)} | {page_name(page)} | {vcpus} | " +
                   " | ".join(f"{met_word(m)}: {txt}" for _, m, txt in t) + " |")
    return "\n".join(out) + "\n"


def markdown(saved):
    m, results = saved["machine"], saved["results"]
    khz = m["cpu_khz"]
    accel = m["accel"]
    acc = ("KVM (`-accel kvm -cpu qemu64`)" if accel == "kvm" else
           f"TCG (`-accel tcg -cpu max`; {m.get('accel_why') or 'asked for'})")
    out = [f"# Post-copy matrix — accelerator: {acc}\n",
           f"Machine: {m['description']}; kernel {m['kernel']}; {m['date']}; faultline: "
           f"{m.get('faultline_label') or m.get('git', '?')}.",
           "QEMU: " + "; ".join(f"{k}: {v}" for k, v in (m.get("qemu_versions") or {}).items()) + ".",
           f"Load: before `{m.get('uptime_before', '?')}`, after `{m.get('uptime_after', '?')}`; "
           f"{cpu_share_text(m.get('cpu_share'))}.",
           f"Guest: faultline-guest, {saved['touches']} touches per phase per vCPU, seed "
           f"{saved['seed']}, looping; the migration starts as vCPU 0 begins a round; measured "
           "per vCPU: the first three phase lines (seq, random, hot, in the guest's order) printed "
           "whole on the destination (its own serial file), starting with the phase running at "
           "the switch; the guest is stopped once that round is out and the migration has "
           "completed. Touch latencies are all reads, faults and hits alike "
           "(p99: upper bound of a quarter-octave bucket); round time: the guest's own time for "
           "those three phases (rdtsc; per phase the slowest vCPU), how far it got while memory "
           "arrived. faultline bulk channels: "
           f"{saved.get('bulk_channels', 1)} (4 KiB pages), {saved.get('bulk_channels_2m', 1)} "
           "(2 MiB pages). Downtime \"own\": the source's STOP event to the destination's RESUME "
           "(QMP timestamps); \"QEMU's\": the source's `downtime` (10.x: wrong below 1 ms). Stream: "
           "faultline's bytes received per engine second, or QEMU's bytes transferred per total "
           "second. \"best\" = the lowest figure of that column among the version's stock modes "
           "(the mode in brackets)." +
           (f" Every cell ran {saved['repeat']} times, the scenarios interleaved; its table "
            "has one row per run, and the best-mode table, the targets and the plots use each "
            "figure's median over the runs (each column on its own), the buckets and touches "
            "of all runs together." if saved.get("repeat", 1) > 1 else "") + "\n"]
    newest, main = anchor(results)
    out.append(f"## Targets (issue 17), {main} against the best stock mode per column\n")
    out.append(f"Total against {newest} (the newest QEMU in this run) and 7.2 separately; "
               "downtime, touch p99 and worst touch against the best of every stock mode of "
               "both; fault-latency mean against the lowest `postcopy-latency` mean of the "
               f"{newest} modes; \"from the buckets\": the "
               "same, both means taken from the pagers' log2 µs distributions by one estimator "
               "(each bucket at 2^i / ln 2 µs) — QEMU's own mean counts another way (see the "
               "note under each cell's distribution). Reading touch p99: each phase makes a fixed "
               "number of touches, so p99 is a fault's latency when more than 1 % of them fault "
               "and a cache hit when fewer do — and the slower a pager answers, the fewer touches "
               "its guest makes while memory is missing (one long stall can let the stream cover "
               "the rest). The best-mode table's guest round time (the guest's own time for the "
               "same three phases; not a target) and worst touch show what a low p99 cost.\n")
    out.append(targets_summary(results, khz))
    for key, d in sorted(groups(results).items()):
        out.append(f"## {group_title(key)}\n")
        out.append(cell_table(d, khz))
        out.append("Best stock mode vs faultline:\n")
        out.append(best_table(d, khz))
        t = targets(d, khz, newest, main)
        out.append("Targets: " + "; ".join(f"{n}: {met_word(mt)} ({txt})" for n, mt, txt in t) + ".\n")
        dt = dist_table(d)
        if dt:
            out.append("Fault latency, each pager's own view (QEMU ≥ 10.1: `postcopy-latency-dist`; "
                       "faultline: `fault_latency.log2_us_dist`), faults per bucket" +
                       (" (all runs together)" if saved.get("repeat", 1) > 1 else "") + ":\n")
            out.append(dt)
    out.append(notes(results))
    return "\n".join(out)


def notes(results):
    out = []
    for c in results:
        used = c.get("guest_ram_used")
        if used and used < c["size_mib"] * MIB:
            out.append(f"{size_name(c['size_mib'])} under QEMU: the pc machine maps RAM above "
                       f"{used >> 30} GiB at 4 GiB, beyond the guest's identity map, so the guest's "
                       f"workload covers the low {used >> 30} GiB; the rest migrates as zero pages "
                       "and is compared too.")
        demo = c.get("demo_ram_mib")
        if demo and demo < c["size_mib"]:
            out.append(f"faultline-demo {size_name(c['size_mib'])}: run with {demo} MiB — the "
                       "reference VMM maps RAM over the local APIC page at 0xfee00000, which KVM "
                       "traps as MMIO; 4076 MiB ends below the I/O APIC (0xfec00000).")
        if c["scenario"] == "faultline-demo" and ok_cell(c):
            out.append("faultline-demo: the reference VMM pauses its source at the end of the "
                       "dirty phase and the guest runs one round, from the switch on "
                       "(`faultline demo` cannot loop the guest); the QEMU cells measure the "
                       "first three phases printed on the destination, from the one running at "
                       "the switch.")
    return ("\nNotes:\n" + "\n".join(f"- {n}" for n in sorted(set(out))) + "\n") if out else ""


# ---- plots (gnuplot) ----

def plot_cdf(results, khz, out_png, work):
    """CDF of every measured destination touch, per RAM/page/vCPUs cell, one curve per scenario."""
    plots = []
    for n, (key, d) in enumerate(sorted(groups(results).items())):
        curves = []
        for name, runs in d.items():
            if not ran(runs):
                continue
            h = {}  # every run's touches together
            for c in ran(runs):
                for i, v in merged_hist(c["guest"]).items():
                    h[i] = h.get(i, 0) + v
            total = sum(h.values())
            if not total:
                continue
            k = ran(runs)[0].get("tsc_khz") or khz
            dat = os.path.join(work, f"cdf-{n}-{name}.dat")
            with open(dat, "w") as f:
                seen = 0
                for i in sorted(h, key=int):
                    seen += h[i]
                    f.write(f"{bucket_upper(i) * 1000.0 / k:.2f} {seen / total:.5f}\n")
            curves.append(f"'{dat}' using 1:2 with steps lw 2 title '{name}'")
        if curves:
            plots.append((group_title(key), curves))
    if not plots:
        return False
    script = [f"set terminal png size 1200,{330 * len(plots)}", f"set output '{out_png}'",
              f"set multiplot layout {len(plots)},2 title 'Guest-observed touch latency on the "
              "destination while memory arrives (the measured round: seq+random+hot)'",
              "set logscale x", "set xlabel 'µs per touch (rdtsc, quarter-octave buckets)'",
              "set grid"]
    for title, curves in plots:
        script += [f"set title 'CDF: {title}'", "unset logscale y", "set yrange [0:1]",
                   "set ylabel 'fraction of touches'", "set key bottom right",
                   "plot " + ", ".join(curves),
                   f"set title 'tail (1 - CDF): {title}'", "set logscale y",
                   "set yrange [1e-4:1]", "set ylabel 'fraction slower'", "set key top right",
                   "plot " + ", ".join(c.replace("using 1:2", "using 1:(1-$2+1e-9)")
                                       for c in curves)]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=False,
                   capture_output=True)
    return os.path.exists(out_png)


def plot_dist(results, out_png, work):
    """The newest QEMU's postcopy-latency-dist (each of its stock modes) vs faultline's
    log2_us_dist, fraction of faults per log2 µs bucket, one panel per RAM/page/vCPUs cell."""
    newest, main = anchor(results)
    def tic(i):
        us = 1 << i
        return f"{us}" if us < 1000 else f"{us // 1000}m" if us < 10 ** 6 else f"{us // 10 ** 6}s"
    plots, top = [], 0
    for n, (key, d) in enumerate(sorted(groups(results).items())):
        curves = []
        for name, runs in d.items():
            dist = dist_of(runs)
            if name not in STOCK[newest] + [main] or not dist or not sum(dist):
                continue
            top = max(top, max(i for i, v in enumerate(dist) if v))
            dat = os.path.join(work, f"dist-{n}-{name}.dat")
            total = sum(dist)
            with open(dat, "w") as f:
                for i, v in enumerate(dist):
                    f.write(f"{i} {v / total:.5f}\n")
            mean = median(own_mean_us(c) for c in ran(runs))
            style = "lw 3 lc rgb '#c00000'" if name == main else "lw 1.5 dt 2"
            curves.append(f"'{dat}' using 1:2 with linespoints {style} title '{name} "
                          f"(mean {fmt_us(mean)}, {total:,} faults)'")
        if curves:
            plots.append((group_title(key), curves))
    if not plots:
        return False
    rows = (len(plots) + 1) // 2
    top = min(23, top + 1)
    tics = ", ".join(f"'{tic(i)}' {i}" for i in range(0, top + 1, 2))
    script = [f"set terminal png size 1200,{380 * rows}", f"set output '{out_png}'",
              f"set multiplot layout {rows},2 title 'Post-copy fault latency as each pager "
              f"measures it: QEMU {newest} postcopy-latency-dist vs faultline fault\\_latency "
              "log2\\_us\\_dist'",
              f"set xtics ({tics})", f"set xrange [0:{top}]",
              "set xlabel 'fault latency: lower bound of the log2 bucket (µs; m = ms, s = s)'",
              "set ylabel 'fraction of faults'", "set yrange [0:*]", "set grid",
              "set key top right font ',9'"]
    for title, curves in plots:
        script += [f"set title '{title}'", "plot " + ", ".join(curves)]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=False,
                   capture_output=True)
    return os.path.exists(out_png)


def write_outputs(args, saved):
    work = tempfile.mkdtemp(prefix="flt-plot-")
    khz = saved["machine"]["cpu_khz"]
    made = []
    if shutil.which("gnuplot"):
        if plot_cdf(saved["results"], khz, os.path.abspath(os.path.join(args.out, "latency.png")), work):
            made.append("latency.png")
        if plot_dist(saved["results"], os.path.abspath(os.path.join(args.out, "latency_dist.png")),
                     work):
            made.append("latency_dist.png")
    shutil.rmtree(work, ignore_errors=True)
    md = markdown(saved)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {args.out}/results.json, results.md" + "".join(", " + m for m in made))


def save_json(path, saved):
    """One line per cell: small enough to keep, still diffable."""
    body = {k: v for k, v in saved.items() if k != "results"}
    with open(path, "w") as f:
        f.write(json.dumps(body, indent=1)[:-2] + ',\n "results": [\n')
        f.write(",\n".join(json.dumps(c, separators=(",", ":")) for c in saved["results"]))
        f.write("\n ]\n}\n")


def machine_description(kvm_ok, kvm_why):
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = meminfo("MemTotal") // (1 << 20)
    kvm = "/dev/kvm" if kvm_ok else f"no usable /dev/kvm ({kvm_why})"
    if kvm_ok and os.path.exists("/sys/module/kvm_pvm"):
        kvm += " (software KVM, kvm_pvm)"
    return f"{os.cpu_count()} vCPUs of {model}, {mem} GiB RAM, {kvm}"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except OSError:
        return None


def resolve_binaries(args, scenarios):
    """args.bins[key] = path, or args.bin_why[key] = why there is none."""
    args.bins, args.bin_why = {}, {}
    wanted = {SCENARIOS[s]["bin"] for s in scenarios if "bin" in SCENARIOS[s]}
    given = {"qemu72": args.qemu72, "qemu10": args.qemu10, "patched10": args.patched_qemu10,
             "qemu11": args.qemu11, "patched11": args.patched_qemu11,
             "patched72": args.patched_qemu72}
    for key in sorted(wanted):
        opt, build_args, what = BINARIES[key]
        path = given[key]
        if key == "qemu72":
            found = shutil.which(path)
            if found:
                args.bins[key] = found
            else:
                args.bin_why[key] = f"no {path} on PATH (apt-get install qemu-system-x86)"
            continue
        if path:
            if os.access(path, os.X_OK):
                args.bins[key] = path
            else:
                args.bin_why[key] = f"{opt} {path} is not executable"
            continue
        r = subprocess.run([BUILD_QEMU] + build_args, capture_output=True, text=True)
        out = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if r.returncode == 0 and os.access(out, os.X_OK):
            args.bins[key] = out
        else:
            args.bin_why[key] = (f"no {what}: build_qemu.sh {' '.join(build_args)} failed: " +
                                 ((r.stderr.strip().splitlines() or ["?"])[-1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    binr = os.path.join(REPO, "bazel-out", "k8-opt", "bin")
    ap.add_argument("--faultline", default=os.path.join(binr, "cli", "faultline"))
    ap.add_argument("--guest", default=os.path.join(binr, "qemu-integration", "guest",
                                                    "faultline-guest"))
    ap.add_argument("--qemu72", "--qemu", default="qemu-system-x86_64",
                    help="Debian's QEMU 7.2 (stock)")
    ap.add_argument("--qemu10", default="", help="stock QEMU 10.2.2 (default: build_qemu.sh's)")
    ap.add_argument("--qemu11", default="", help="stock QEMU 11.1.1 (default: build_qemu.sh's)")
    ap.add_argument("--patched-qemu11", default="",
                    help="QEMU 11.1.1 with the series (default: build_qemu.sh's)")
    ap.add_argument("--patched-qemu10", default="",
                    help="QEMU 10.2.2 with x-postcopy-external-pager (default: build_qemu.sh's)")
    ap.add_argument("--patched-qemu72", "--patched-qemu", default="",
                    help="QEMU 7.2 with x-postcopy-external-pager (default: build_qemu.sh's)")
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--quick", action="store_true", help="256 MiB, 4 KiB pages, 1 vCPU")
    ap.add_argument("--sizes-mib", default="1024,4096")
    ap.add_argument("--pages", default="4K,2M")
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help="comma-separated, from: " + ", ".join(SCENARIOS))
    ap.add_argument("--only", default="",
                    help="cells to run as SIZE:PAGE (e.g. 1024:4K,4096:4K); default: every one")
    ap.add_argument("--bulk-channels", type=int, default=1,
                    help="faultline serve/demo --bulk_channels for the faultline cells")
    ap.add_argument("--faultline-flag", action="append", default=[],
                    help="an extra flag for faultline source, serve and demo in the faultline "
                         "cells (each ignores what it has no use for), e.g. "
                         "--faultline-flag=--bulk_solo_after_fault=0 (repeatable)")
    ap.add_argument("--bulk-channels-2m", type=int, default=0,
                    help="the same for 2 MiB-page cells (default: --bulk-channels)")
    ap.add_argument("--multifd-channels", type=int, default=2,
                    help="multifd-channels of the *-mfd scenarios")
    ap.add_argument("--faultline-label", default="",
                    help="what the faultline binary is (for the report; default: the tree's rev)")
    ap.add_argument("--qemu-trace", default="",
                    help="comma-separated QEMU trace event patterns for both QEMUs (e.g. "
                    "'vmstate_downtime*,loadvm_postcopy_handle*'); logs kept in the cell's "
                    "work directory")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every cell N times, the scenarios interleaved (s1 s2 … s1 s2 …); "
                         "the best-mode tables and the targets then use each figure's median")
    ap.add_argument("--touches", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--replot", help="redraw results.md and the plots from a results.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        write_outputs(args, saved)
        return 0
    if args.quick:
        args.sizes_mib, args.pages, args.vcpus = "256", "4K", "1"
    if args.repeat < 1:
        sys.exit(f"--repeat {args.repeat}: give at least 1 (runs of every cell)")
    if not args.bulk_channels_2m:
        args.bulk_channels_2m = args.bulk_channels
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        sys.exit(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(SCENARIOS)}")
    for b in (args.faultline, args.guest):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: bazel build -c opt //cli:faultline "
                     "//qemu-integration/guest:faultline-guest")
    kvm_ok, kvm_why = kvm_state()
    if args.accel == "auto":
        args.accel = "kvm" if kvm_ok else "tcg"
        args.accel_why = "auto: " + ("/dev/kvm usable" if kvm_ok else kvm_why)
    elif args.accel == "kvm" and not kvm_ok:
        sys.exit(f"--accel=kvm: {kvm_why}")
    else:
        args.accel_why = f"--accel={args.accel}"
    resolve_binaries(args, scenarios)
    only = {tuple(x.split(":")) for x in args.only.split(",") if x}

    khz = cpu_khz()
    machine = {"cpu_khz": khz, "cores": os.cpu_count(), "kernel": os.uname().release,
               "description": machine_description(kvm_ok, kvm_why),
               "accel": args.accel, "accel_why": args.accel_why,
               "qemu_versions": {k: qemu_version(p) for k, p in sorted(args.bins.items())},
               "qemu_paths": args.bins, "qemu_missing": args.bin_why,
               "git": git_rev(), "faultline_label": args.faultline_label,
               "faultline_flags": args.faultline_flag,
               "date": time.strftime("%Y-%m-%d %H:%M"),
               "uptime_before": uptime(), "cpu_share": cpu_share()}
    print(f"accelerator: {args.accel} ({args.accel_why}); load before: {machine['uptime_before']}; "
          f"{cpu_share_text(machine['cpu_share'])}", flush=True)
    for k, why in args.bin_why.items():
        print(f"   {k}: {why}", flush=True)
    work_root = tempfile.mkdtemp(prefix="flt-matrix-")
    huge = HugePages(work_root)
    results = []
    not_here = set()
    t_start = time.time()
    try:
        for size in [int(s) for s in args.sizes_mib.split(",")]:
            for page in args.pages.split(","):
                if only and (str(size), page) not in only:
                    continue
                for vcpus, rep, scenario in ((v, r, sc)
                                             for v in [int(x) for x in args.vcpus.split(",")]
                                             for r in range(args.repeat) for sc in scenarios):
                    if (size, page, vcpus, scenario) in not_here:
                        continue  # n/a in its first run: the reason is the same in the next
                    cell = {"scenario": scenario, "size_mib": size, "page": page,
                            "vcpus": vcpus, "accel": args.accel}
                    if args.repeat > 1:
                        cell["run"] = rep + 1
                    work = tempfile.mkdtemp(prefix=f"{scenario}-{size}-{page}-{vcpus}-",
                                            dir=work_root)
                    runno = f", run {rep + 1}/{args.repeat}" if args.repeat > 1 else ""
                    print(f"== {scenario}: {size_name(size)}, {page} pages, {vcpus} vCPU(s), "
                          f"{args.accel}{runno} [{time.strftime('%H:%M:%S')}]", flush=True)
                    t = time.time()
                    try:
                        run = run_demo if scenario == "faultline-demo" else run_qemu
                        cell.update(run(args, work, cell, huge))
                        f = figures(cell, khz)
                        print(f"   {cell['total_seconds']:.2f} s, downtime {fmt_ms(f['down'])}, "
                              f"p99 {fmt_us(f['p99'])}, max {fmt_us(f['max'])}, urgent "
                              f"{f['urgent']}, verified: {cell['verified']} "
                              f"({time.time() - t:.0f} s wall)", flush=True)
                        if args.qemu_trace:
                            print(f"   traces kept in {work}", flush=True)
                        else:
                            shutil.rmtree(work, ignore_errors=True)
                    except NotApplicable as e:
                        cell["na"] = str(e)
                        not_here.add((size, page, vcpus, scenario))
                        print("   n/a:", e, flush=True)
                    except Exception as e:  # reported in the table, not hidden
                        cell["error"] = str(e)
                        print("   ERROR:", e, f"(logs in {work})", flush=True)
                    cell["wall_seconds"] = round(time.time() - t, 1)
                    results.append(cell)
                huge.restore()  # between sizes: give the huge pages back
    finally:
        huge.restore()
    machine["uptime_after"] = uptime()
    machine["wall_minutes"] = round((time.time() - t_start) / 60, 1)
    print("load after:", machine["uptime_after"], flush=True)
    saved = {"machine": machine, "touches": args.touches, "seed": args.seed,
             "bulk_channels": args.bulk_channels, "bulk_channels_2m": args.bulk_channels_2m,
             "multifd_channels": args.multifd_channels, "scenarios": scenarios,
             "repeat": args.repeat,
             "results": results}
    save_json(os.path.join(args.out, "results.json"), saved)
    write_outputs(args, saved)
    bad = [c for c in results if "error" in c or ("verified" in c and not c["verified"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
