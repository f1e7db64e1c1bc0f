#!/usr/bin/env python3
"""Side by side on one machine, one run: QEMU's own post-copy vs faultline, same guest.

The guest is qemu-integration/guest (a freestanding PVH kernel). It writes a pattern into every
data page, then reads pages in three phases — sequential scan, uniform random, hot set (10 % of
the pages get 90 % of the touches) — timing each read with rdtsc and reporting each phase on the
serial port (percentiles, max, and a quarter-octave histogram). Every scenario migrates it right
after its dirty phase, so the touch phases run on the destination, in that order, while memory
arrives. Scenarios:

  qemu-postcopy          Debian's qemu-system-x86_64 (-accel kvm): migrate, then
                         migrate-start-postcopy over loopback TCP; QEMU's own fault thread
  qemu-postcopy-preempt  the same with postcopy-preempt (urgent pages on their own channel)
  faultline-qemu         the patched QEMU (qemu-integration/qemu/build_qemu.sh) with
                         x-postcopy-external-pager: the same VMM and RAM setup, only the pager
                         differs — faultline source + faultline serve carry guest RAM
  faultline-demo         `faultline demo`: the reference VMM on KVM + faultline

All three QEMU scenarios use the same RAM: memory-backend-file share=on on /dev/shm (4 KiB
pages) or on a hugetlbfs mount (2 MiB pages). The matrix: RAM sizes x page sizes x vCPUs x
scenarios; a cell that cannot run here says exactly why ("n/a: ..."). Per cell: total time,
downtime, guest-observed touch latency p50/p99/max per phase, pages requested urgently, bytes
on the wire, and the verification: every data page of the destination compared byte for byte
with the source after the run (QEMU: the two RAM files; demo: the reference VMM's own check).

Outputs in --out: results.json, results.md, latency.png (CDFs, gnuplot).
  compare_postcopy.py --quick            256 MiB, 4 KiB pages, 1 vCPU, every scenario
  compare_postcopy.py                    the full matrix: 1 and 4 GiB, 4 KiB and 2 MiB, 1 and 2 vCPUs
  compare_postcopy.py --replot results.json --out DIR    redraw results.md and latency.png
Needs root (userfaultfd, KVM, huge pages, mount). Binaries are taken from --faultline/--guest
(default: bazel-out/k8-opt/bin of this workspace) and --patched-qemu (default: build_qemu.sh).
"""
import argparse
import json
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
from harness import free_port, read, wait_for  # noqa: E402  (helpers shared by the drivers)
from qmp import Qmp  # noqa: E402  (the shared QMP client)

MAILBOX_GPA = 0x5000
PAGE = 4096
MIB = 1 << 20
HUGE = 2 * MIB
PHASES = ("seq", "random", "hot")
SCENARIOS = ("qemu-postcopy", "qemu-postcopy-preempt", "faultline-qemu", "faultline-demo")
QEMU_FIRMWARE = ("/usr/share/seabios", "/usr/share/qemu")
DEMO_MAX_MIB = 0xFEC00000 // MIB  # 4076: below the I/O APIC and local APIC pages


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


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def mailbox(ram, seed, touches, vcpus):
    # guest_abi.h: magic, version, ram_size, seed, touches, slow_cycles, mode, rounds, num_cpus
    return struct.pack("<IIQQQQIII", 0x4D544C46, 1, ram, seed, touches, 0, 0xF, 1, vcpus)


# ---- the guest's serial report ----

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
        return self.mount

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

def run_qemu(args, work, cell, huge):
    scenario, size_mib, page, vcpus = cell["scenario"], cell["size_mib"], cell["page"], cell["vcpus"]
    pager = scenario == "faultline-qemu"
    qemu = args.patched_qemu if pager else args.qemu
    if not qemu:
        raise NotApplicable("no patched QEMU: " + args.patched_qemu_why)
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
        argv = [qemu, "-accel", "kvm", "-cpu", "host", "-smp", str(vcpus), "-m", f"{size_mib}M",
                "-nodefaults",
                "-vga", "none", "-display", "none", "-no-reboot",
                "-object", f"memory-backend-file,id=mem,size={size_mib}M,mem-path={ram},share=on",
                "-machine", "pc,memory-backend=mem", "-kernel", args.guest,
                "-serial", "file:" + os.path.join(work, name + ".serial"),
                "-qmp", "unix:%s,server=on,wait=off" % os.path.join(work, name + ".qmp")]
        if pager:
            for fw in QEMU_FIRMWARE:
                argv += ["-L", fw]
        return argv + extra

    try:
        for f in (src_ram, dst_ram):
            if os.path.exists(f):
                os.unlink(f)
        spawn("src-qemu", qemu_argv("src", src_ram, ["-S"]))
        src = Qmp(os.path.join(work, "src.qmp"))
        with open(src_ram, "r+b") as f:  # the mailbox, before the guest runs (mmap: hugetlbfs)
            m = mmap.mmap(f.fileno(), 2 * HUGE)
            mb = mailbox(guest_ram, args.seed, args.touches, vcpus)
            m[MAILBOX_GPA:MAILBOX_GPA + len(mb)] = mb
            m.close()
        src.ok("cont")
        serial = os.path.join(work, "src.serial")
        boot = wait_for(lambda: re.search(r"FLT cpu=0 boot .*data=0x([0-9a-f]+)-.*abi=(\w+)",
                                          read(serial)), 120, "the guest to boot on the source")
        if boot.group(2) != "vmm":
            raise RuntimeError("the guest did not see the mailbox: " + boot.group(0))
        data_start = int(boot.group(1), 16)
        wait_for(lambda: read(serial).count("phase=dirty") >= vcpus, 1800,
                 "the guest's dirty phase (every vCPU)")

        caps = ["postcopy-ram"]
        extra = ["-incoming", "defer"]
        serve = None
        if pager:
            caps += ["x-ignore-shared", "x-postcopy-external-pager"]
            token, fl_port = secrets.token_hex(32), free_port()
            sock = os.path.join(work, "pager.sock")
            region = f"mem={src_ram}:{size_mib}M" + (":2M" if page == "2M" else "")
            spawn("faultline-source", [args.faultline, "source", f"--listen=127.0.0.1:{fl_port}",
                                       "--token=" + token, "--region=" + region])
            wait_for(lambda: "serving" in read(os.path.join(work, "faultline-source.log")), 60,
                     "faultline source")
            serve = spawn("faultline-serve", [args.faultline, "serve", "--handoff=" + sock,
                                              f"--connect=127.0.0.1:{fl_port}", "--token=" + token,
                                              "--state_dir=" + os.path.join(work, "state"),
                                              "--progress=false"])
            wait_for(lambda: "waiting for a VMM" in read(os.path.join(work, "faultline-serve.log")),
                     30, "faultline serve")
            extra += ["-global", "migration.x-postcopy-external-pager-socket=" + sock]
        elif scenario.endswith("preempt"):
            caps.append("postcopy-preempt")
        spawn("dst-qemu", qemu_argv("dst", dst_ram, extra))
        dst = Qmp(os.path.join(work, "dst.qmp"))
        capl = [{"capability": c, "state": True} for c in caps]
        dst.ok("migrate-set-capabilities", capabilities=capl)
        src.ok("migrate-set-capabilities", capabilities=capl)
        port = free_port()
        dst.ok("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")

        t0 = time.time()
        src.ok("migrate", uri=f"tcp:127.0.0.1:{port}")
        src.cmd("migrate-start-postcopy")  # with the pager the switch may already have happened
        final = wait_for(lambda: (dst.ok("query-migrate").get("status") in ("completed", "failed")
                                  and dst.ok("query-migrate")["status"]), 1800,
                         "the destination migration to complete", interval=0.02)
        t_done = time.time()
        if final != "completed":
            raise RuntimeError("destination migration " + final)
        info = wait_for(lambda: (lambda i: i if i.get("status") in ("completed", "failed")
                                 else None)(src.ok("query-migrate")), 120,
                        "the source migration to complete")
        dserial = os.path.join(work, "dst.serial")
        wait_for(lambda: "FLT done" in read(dserial), 1800, "the guest to finish on the destination")
        dst.ok("stop")
        src_state = src.ok("query-status")["status"]
        if src_state not in ("postmigrate", "paused", "finish-migrate"):
            raise RuntimeError(f"source is {src_state}, not paused")

        ram = info.get("ram", {})
        res = {"total_seconds": round(t_done - t0, 3), "downtime_ms": info.get("downtime"),
               "urgent_requests": ram.get("postcopy-requests"),
               "bytes_on_wire": ram.get("transferred", 0), "data_start": data_start,
               "guest_ram_used": guest_ram, "qemu": qemu}
        if pager:
            serve.wait(timeout=120)
            log = read(os.path.join(work, "faultline-serve.log"))
            start = re.search(r"^\{$", log, re.M)  # serve prints its stats last
            stats = json.loads(log[start.start():]) if start else {}
            res["urgent_requests"] = stats.get("urgent_requests")
            res["bytes_on_wire"] += stats.get("bytes_received", 0)
            res["qemu_stream_bytes"] = ram.get("transferred", 0)
            res["engine_fault_latency"] = stats.get("fault_latency")
            res["engine_faults"] = stats.get("faults")
        res["guest"] = parse_guest(read(dserial))
        res["verify"] = compare_ram(src_ram, dst_ram, size, data_start)
        gbad = sum(p["bad"] for p in res["guest"].values())
        res["verified"] = res["verify"]["data_mismatches"] == 0 and gbad == 0 and bool(res["guest"])
        return res
    except Exception as e:
        tails = []
        for name, _ in procs:
            tails += [f"[{name}] {l}" for l in read(os.path.join(work, name + ".log")).splitlines()[-4:]]
        raise RuntimeError(f"{e}\n" + "\n".join(tails)) from e
    finally:
        for _, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in (src_ram, dst_ram):
            if os.path.exists(f):
                os.unlink(f)


# ---- faultline demo (reference VMM) ----

def run_demo(args, work, cell, huge):
    if cell["page"] == "2M":
        raise NotApplicable("the reference VMM has no hugetlbfs RAM (demo --dest_ram: memfd, "
                            "anon, guest_memfd)")
    # The reference VMM maps RAM over the local APIC page (0xfee00000), which KVM traps as
    # MMIO: a 4096 MiB demo guest's dirty phase exits there (KVM_EXIT_MMIO). RAM is capped
    # below the I/O APIC (0xfec00000 = 4076 MiB) and the table says so.
    demo_mib = min(cell["size_mib"], DEMO_MAX_MIB)
    out = os.path.join(work, "demo.json")
    env = dict(os.environ, FAULTLINE_GUEST_ELF=args.guest)
    r = subprocess.run([args.faultline, "demo", f"--size={demo_mib}M",
                        f"--vcpus={cell['vcpus']}", f"--guest_touches={args.touches}",
                        "--progress=false", "--guest_serial", f"--stats_json={out}"],
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
    return {"total_seconds": j["total_seconds"], "downtime_ms": j["downtime_ms"],
            "urgent_requests": e["urgent_requests"], "bytes_on_wire": e["bytes_received"],
            "engine_fault_latency": e["fault_latency"], "engine_faults": e["faults"],
            "tsc_khz": j.get("tsc_khz"), "guest": parse_guest(dest_lines), "demo_ram_mib": demo_mib,
            "verify": {"pages": j["verified_pages"], "data_mismatches": j["mismatches"]},
            "verified": j["mismatches"] == 0 and j["guest_bad_reads"] == 0}


# ---- report ----

def fmt_us(v):
    if v is None:
        return "–"
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


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


def markdown(results, khz):
    head = ("| scenario | RAM | page | vCPUs | total | downtime | guest touch p50 (seq / random / hot) "
            "| guest touch p99 (seq / random / hot) | max touch | urgent requests | bytes on the wire "
            "| faultline fault p50 / p99 | verified |")
    rows = [head, "|" + "---|" * 13]
    for c in results:
        lead = f"| {c['scenario']} | {size_name(c['size_mib'])} | {c['page']} | {c['vcpus']} |"
        if "na" in c:
            rows.append(f"{lead} n/a: {c['na']} |" + " |" * 8)
            continue
        if "error" in c:
            rows.append(f"{lead} error: {error_line(c['error'])} |" + " |" * 8)
            continue
        g = summarize_guest(c["guest"], c.get("tsc_khz") or khz)
        p50 = " / ".join(fmt_us(g[p]["p50_us"]) if p in g else "–" for p in PHASES)
        p99 = " / ".join(fmt_us(g[p]["p99_us"]) if p in g else "–" for p in PHASES)
        fl = c.get("engine_fault_latency") or {}
        eng = (f"{fl['p50_ns'] / 1000:.0f} / {fl['p99_ns'] / 1000:.0f} µs"
               if fl.get("count") else "– (not exposed)" if c["scenario"].startswith("qemu") else "–")
        v = c["verify"]
        ver = (f"{'yes' if c['verified'] else 'NO'}: {v['data_mismatches']} mismatches / "
               f"{v.get('data_pages', v['pages']):,} pages")
        rows.append(f"{lead} {c['total_seconds']:.2f} s | {float(c['downtime_ms'] or 0):.0f} ms | "
                    f"{p50} | {p99} | {fmt_us(g['all']['max_us'])} | {c['urgent_requests'] if c['urgent_requests'] is not None else '–':} | "
                    f"{fmt_bytes(c['bytes_on_wire'])} | {eng} | {ver} |")
    return "\n".join(rows) + "\n"


def targets(results, khz):
    """faultline-qemu against QEMU's own post-copy in the same run, per (RAM, page) cell."""
    rows = ["| RAM | page | vCPUs | all touches p50: faultline-qemu / best QEMU (ratio) "
            "| p99: faultline-qemu / best QEMU (ratio) | total: faultline-qemu / best QEMU |",
            "|---|---|---|---|---|---|"]
    cells = {}
    for c in results:
        if "na" in c or "error" in c:
            continue
        cells.setdefault((c["size_mib"], c["page"], c["vcpus"]), {})[c["scenario"]] = c
    for (size, page, vcpus), d in sorted(cells.items()):
        f = d.get("faultline-qemu")
        qs = [d[s] for s in ("qemu-postcopy", "qemu-postcopy-preempt") if s in d]
        if not f or not qs:
            continue
        fg = summarize_guest(f["guest"], khz)["all"]
        qg = [summarize_guest(q["guest"], khz)["all"] for q in qs]
        q50, q99 = min(g["p50_us"] for g in qg), min(g["p99_us"] for g in qg)
        qt = min(q["total_seconds"] for q in qs)
        rows.append(f"| {size_name(size)} | {page} | {vcpus} | {fmt_us(fg['p50_us'])} / {fmt_us(q50)} "
                    f"({fg['p50_us'] / q50:.2f}) | {fmt_us(fg['p99_us'])} / {fmt_us(q99)} "
                    f"({fg['p99_us'] / q99:.2f}) | {f['total_seconds']:.2f} s / {qt:.2f} s |")
    return "\n".join(rows) + "\n"


def plot(results, khz, out_png, work):
    """CDF of every destination touch, per RAM/page/vCPUs cell, one curve per scenario."""
    if not shutil.which("gnuplot"):
        return False
    cells = []
    for c in results:
        if "na" in c or "error" in c:
            continue
        key = (c["size_mib"], c["page"], c["vcpus"])
        if key not in cells:
            cells.append(key)
    if not cells:
        return False
    plots = []
    for n, key in enumerate(cells):
        curves = []
        for c in results:
            if (c["size_mib"], c["page"], c["vcpus"]) != key or "guest" not in c:
                continue
            h = merged_hist(c["guest"])
            total = sum(h.values())
            if not total:
                continue
            k = c.get("tsc_khz") or khz
            dat = os.path.join(work, f"cdf-{n}-{c['scenario']}.dat")
            with open(dat, "w") as f:
                seen = 0
                for i in sorted(h, key=int):
                    seen += h[i]
                    f.write(f"{bucket_upper(i) * 1000.0 / k:.2f} {seen / total:.5f}\n")
            curves.append(f"'{dat}' using 1:2 with steps lw 2 title '{c['scenario']}'")
        if curves:
            plots.append((f"{size_name(key[0])}, {key[1]} pages, {key[2]} vCPU(s)", curves))
    rows = len(plots)
    script = [f"set terminal png size 1200,{400 * rows}", f"set output '{out_png}'",
              f"set multiplot layout {rows},2 title 'Guest-observed touch latency on the "
              "destination while memory arrives (all touches, seq+random+hot)'",
              "set logscale x", "set xlabel 'µs per touch (rdtsc, quarter-octave buckets)'",
              "set key bottom right", "set grid"]
    for title, curves in plots:
        script += [f"set title 'CDF: {title}'", "unset logscale y", "set yrange [0:1]",
                   "set ylabel 'fraction of touches'", "set key bottom right",
                   "plot " + ", ".join(curves),
                   f"set title 'tail (1 - CDF): {title}'", "set logscale y",
                   "set yrange [1e-4:1]", "set ylabel 'fraction slower'", "set key top right",
                   "plot " + ", ".join(c.replace("using 1:2", "using 1:(1-$2+1e-9)")
                                       for c in curves)]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=False)
    return os.path.exists(out_png)


def write_outputs(args, saved, khz):
    work = tempfile.mkdtemp(prefix="flt-plot-")
    png = plot(saved["results"], khz, os.path.abspath(os.path.join(args.out, "latency.png")), work)
    md = (f"Machine: {saved['machine']['description']}; kernel {saved['machine']['kernel']}; "
          f"{saved['machine']['qemu']}; {saved['machine']['date']}.\n"
          f"Load: before `{saved['machine'].get('uptime_before', '?')}`, "
          f"after `{saved['machine'].get('uptime_after', '?')}`.\n"
          f"Guest: faultline-guest, {saved['touches']} touches per phase per vCPU, seed "
          f"{saved['seed']}; phases run in the order seq, random, hot right after the switch "
          "(\"–\": the phase ended on the source, before the switch). Touch latencies are "
          "all reads, faults and hits alike (p50/p99: upper bounds of quarter-octave buckets).\n\n"
          + markdown(saved["results"], khz) + notes(saved["results"]) + "\nfaultline-qemu vs QEMU's own post-copy "
          "(the better of plain and preempt per column), per RAM, page size and vCPU count:\n\n" + targets(saved["results"], khz))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {args.out}/results.json, results.md" + (", latency.png" if png else ""))


def notes(results):
    out = []
    for c in results:
        used = c.get("guest_ram_used")
        if used and used < c["size_mib"] * MIB:
            out.append(f"{c['scenario']} {size_name(c['size_mib'])}: QEMU's pc machine maps RAM "
                       f"above {used >> 30} GiB at 4 GiB, beyond the guest's identity map, so the "
                       f"guest's workload covers the low {used >> 30} GiB; the rest migrates as "
                       "zero pages and is compared too.")
        demo = c.get("demo_ram_mib")
        if demo and demo < c["size_mib"]:
            out.append(f"faultline-demo {size_name(c['size_mib'])}: run with {demo} MiB — the "
                       "reference VMM maps RAM over the local APIC page at 0xfee00000, which KVM "
                       "traps as MMIO, so a 4096 MiB demo guest stops with KVM_EXIT_MMIO there "
                       "in its dirty phase; 4076 MiB ends below the I/O APIC (0xfec00000).")
    return ("\nNotes:\n" + "\n".join(f"- {n}" for n in sorted(set(out))) + "\n") if out else ""


def machine_description():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = meminfo("MemTotal") // (1 << 20)
    return f"{os.cpu_count()} vCPUs of {model}, {mem} GiB RAM, /dev/kvm (software KVM, kvm_pvm)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    binr = os.path.join(REPO, "bazel-out", "k8-opt", "bin")
    ap.add_argument("--faultline", default=os.path.join(binr, "cli", "faultline"))
    ap.add_argument("--guest", default=os.path.join(binr, "qemu-integration", "guest",
                                                    "faultline-guest"))
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="stock QEMU (Debian's)")
    ap.add_argument("--patched-qemu", default="",
                    help="QEMU with x-postcopy-external-pager (default: build_qemu.sh's)")
    ap.add_argument("--quick", action="store_true", help="256 MiB, 4 KiB pages, 1 vCPU")
    ap.add_argument("--sizes-mib", default="1024,4096")
    ap.add_argument("--pages", default="4K,2M")
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--touches", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--replot", help="redraw results.md/latency.png from a results.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    khz = cpu_khz()
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        write_outputs(args, saved, saved["machine"]["cpu_khz"])
        return 0
    if args.quick:
        args.sizes_mib, args.pages, args.vcpus = "256", "4K", "1"
    for b in (args.faultline, args.guest):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: bazel build -c opt //cli:faultline "
                     "//qemu-integration/guest:faultline-guest")
    args.patched_qemu_why = ""
    if not args.patched_qemu and "faultline-qemu" in args.scenarios:
        r = subprocess.run([os.path.join(REPO, "qemu-integration", "qemu", "build_qemu.sh")],
                           capture_output=True, text=True)
        path = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if r.returncode == 0 and os.access(path, os.X_OK):
            args.patched_qemu = path
        else:
            args.patched_qemu_why = "build_qemu.sh failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]

    machine = {"cpu_khz": khz, "cores": os.cpu_count(), "kernel": os.uname().release,
               "description": machine_description(),
               "qemu": subprocess.run([args.qemu, "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]
               if shutil.which(args.qemu) else None,
               "patched_qemu": args.patched_qemu, "date": time.strftime("%Y-%m-%d %H:%M"),
               "uptime_before": uptime()}
    print("load before:", machine["uptime_before"], flush=True)
    work_root = tempfile.mkdtemp(prefix="flt-matrix-")
    huge = HugePages(work_root)
    results = []
    try:
        for size in [int(s) for s in args.sizes_mib.split(",")]:
            for page in args.pages.split(","):
                for vcpus in [int(v) for v in args.vcpus.split(",")]:
                    for scenario in args.scenarios.split(","):
                        cell = {"scenario": scenario, "size_mib": size, "page": page,
                                "vcpus": vcpus}
                        work = tempfile.mkdtemp(prefix=f"{scenario}-{size}-{page}-{vcpus}-",
                                                dir=work_root)
                        print(f"== {scenario}: {size_name(size)}, {page} pages, {vcpus} vCPU(s) "
                              f"[{time.strftime('%H:%M:%S')}]", flush=True)
                        t = time.time()
                        try:
                            run = run_demo if scenario == "faultline-demo" else run_qemu
                            cell.update(run(args, work, cell, huge))
                            print(f"   {cell['total_seconds']:.2f} s, verified: {cell['verified']} "
                                  f"({time.time() - t:.0f} s wall)", flush=True)
                        except NotApplicable as e:
                            cell["na"] = str(e)
                            print("   n/a:", e, flush=True)
                        except Exception as e:  # reported in the table, not hidden
                            cell["error"] = str(e)
                            print("   ERROR:", e, f"(logs in {work})", flush=True)
                        results.append(cell)
            huge.restore()  # between sizes: give the huge pages back
    finally:
        huge.restore()
    machine["uptime_after"] = uptime()
    print("load after:", machine["uptime_after"], flush=True)
    saved = {"machine": machine, "touches": args.touches, "seed": args.seed, "results": results}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(saved, f, indent=1)
    write_outputs(args, saved, khz)
    bad = [c for c in results if "error" in c or ("verified" in c and not c["verified"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
