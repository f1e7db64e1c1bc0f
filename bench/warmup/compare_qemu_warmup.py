#!/usr/bin/env python3
"""Warm-up with QEMU guests, same machine, same run (issue 19): faultline as QEMU's pager with
pure post-copy, faultline with warm-up (series patch 7: the source QEMU reports what its guest
wrote), and QEMU's own pre-copy → post-copy (stock 10.2.2 and Debian's 7.2: one pre-copy pass,
then migrate-start-postcopy — what libvirt's --postcopy-after-precopy does).

The guest is qemu-integration/guest in churn mode: after its dirty phase it rewrites word 1 of
every page of a hot block (the first --churn of 1000 data pages; 0: idle) with a generation
counter, on the source and, after the switch, on the destination. The migration starts
--churn_s seconds into the churn. The destination keeps running until the migration has
completed; then the driver stops the churn (the mailbox's churn_stop, written into the
destination's RAM file), stops the destination and compares its RAM with the source's: every
data page byte for byte, except word 1 of a hot page, which the destination's guest kept rewriting —
there it must be at least the source's last value (a generation counter only grows).
(A stale page the destination's guest rewrote escapes this check; correctness is tested where
the destination's guest does not run first: qemu_migration.py --warmup and migration-test.)

Per cell (median of --reps): faults after the switch (faultline's, or QEMU's postcopy-requests),
time from the switch (the source's STOP) to the destination's completion, total time (migrate →
completed), downtime (the source's STOP to the destination's RESUME, QMP timestamps), warm-up
rounds. The churning guest's writes are not timed: no touch latency here.

  bench/warmup/compare_qemu_warmup.py [--size_mib 256] [--reps 3] [--accel auto]
      [--out bench/results/qemu-warmup]
Needs root. Binaries: --faultline, --guest (bazel-bin of this workspace); QEMUs from
build_qemu.sh (patched and stock 10.2) and qemu-system-x86_64 on PATH (7.2).
"""
import argparse
import json
import mmap
import os
import re
import secrets
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "qemu-integration", "qemu"))
import compare_postcopy as cp  # noqa: E402  (QEMU binaries, QMP with events, accelerator)
from harness import (free_port, give_dirty_log, give_pager, read, remove_files,  # noqa: E402
                     stop_processes, wait_for)

PAGE = 4096
SCENARIOS = {  # name -> (binary key, how)
    "faultline-postcopy": ("patched10", "pager"),
    "faultline-warmup": ("patched10", "warm"),
    # warm-up that slows the source's guest down when its rounds stop shrinking (--throttle)
    "faultline-warmup-throttle": ("patched10", "warm-throttle"),
    "qemu10-hybrid": ("qemu10", "hybrid"),
    "qemu72-hybrid": ("qemu72", "hybrid"),
}


CHURN_STOP = 56  # offset of churn_stop in the mailbox


def compare(src, dst, size, data_first, hot_end):
    """Data pages that differ, but for word 1 of hot pages (there: dst >= src)."""
    hot_first = data_first
    bad = []
    with open(src, "rb") as fs, open(dst, "rb") as fd:
        ms = mmap.mmap(fs.fileno(), size, prot=mmap.PROT_READ)
        md = mmap.mmap(fd.fileno(), size, prot=mmap.PROT_READ)
        try:
            for p in range(size // PAGE):
                a, b = ms[p * PAGE:(p + 1) * PAGE], md[p * PAGE:(p + 1) * PAGE]
                if a == b:
                    continue
                if hot_first <= p < hot_end and a[:8] == b[:8] and a[16:] == b[16:] and \
                        struct.unpack("<Q", b[8:16])[0] >= struct.unpack("<Q", a[8:16])[0]:
                    continue
                # Below the data (the guest's image, stack and status block, which its running
                # copy keeps writing; the option ROM area, kvmvapic's): not compared.
                if p < data_first:
                    continue
                bad.append(p)
        finally:
            ms.close()
            md.close()
    return bad


def run_cell(a, work, scenario, churn):
    key, how = SCENARIOS[scenario]
    qemu = a.bins.get(key)
    if not qemu:
        raise cp.NotApplicable(a.bin_why.get(key, "no QEMU binary"))
    size = a.size_mib << 20
    tag = "flt-qwarm-%d" % os.getpid()
    src_ram, dst_ram = "/dev/shm/%s-src" % tag, "/dev/shm/%s-dst" % tag
    procs = []

    def spawn(name, argv):
        log = open(os.path.join(work, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    def qemu_argv(name, ram, extra):
        argv = [qemu] + cp.accel_argv(a.accel) + [
            "-m", "%dM" % a.size_mib, "-nodefaults", "-vga", "none", "-display", "none",
            "-no-reboot", "-object",
            "memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on" % (a.size_mib, ram),
            "-machine", "pc,memory-backend=mem", "-kernel", a.guest,
            "-serial", "file:" + os.path.join(work, name + ".serial"),
            "-qmp", "unix:%s,server=on,wait=off" % os.path.join(work, name + ".qmp")]
        if key != "qemu72":
            for fw in cp.QEMU_FIRMWARE:
                argv += ["-L", fw]
        return argv + extra

    try:
        spawn("src-qemu", qemu_argv("src", src_ram, ["-S"]))
        src = cp.EventQmp(os.path.join(work, "src.qmp"))
        with open(src_ram, "r+b") as f:
            f.seek(cp.MAILBOX_GPA)
            # The default phases | FLT_MODE_CHURN (0x10), rewriting until churn_stop.
            f.write(cp.mailbox(size, 0x5eed, 16384, 1, 1 << 30, mode=0x1F, churn_permille=churn))
        src.ok("cont")
        serial = os.path.join(work, "src.serial")
        boot = wait_for(lambda: re.search(r"FLT cpu=0 boot .*data=0x([0-9a-f]+)-", read(serial)),
                        120, "the guest to boot")
        data_start = int(boot.group(1), 16)
        wait_for(lambda: "phase=dirty" in read(serial), 600, "the guest's dirty phase")
        first = data_start // PAGE
        hot_end = first + (size // PAGE - first) * churn // 1000

        caps = ["postcopy-ram"]
        extra = ["-incoming", "defer"]
        warm = how.startswith("warm")
        pager = how == "pager" or warm
        if pager:
            caps += ["x-ignore-shared", "x-postcopy-external-pager", "return-path",
                     "switchover-ack"]
            token, fl_port = secrets.token_hex(32), free_port()
            sock, warm_sock = os.path.join(work, "pager.sock"), os.path.join(work, "warm.sock")
            spawn("faultline-source",
                  [a.faultline, "source", "--listen=127.0.0.1:%d" % fl_port, "--token=" + token,
                   "--region=mem=%s:%dM" % (src_ram, a.size_mib)] +
                  (["--vmm_dirty_socket=" + warm_sock] if warm else []))
            wait_for(lambda: "serving" in read(os.path.join(work, "faultline-source.log")), 60,
                     "faultline source")
            serve = spawn("faultline-serve",
                          [a.faultline, "serve", "--handoff=" + sock,
                           "--connect=127.0.0.1:%d" % fl_port, "--token=" + token,
                           "--state_dir=" + os.path.join(work, "state"), "--progress=false"] +
                          (["--warmup", "--warmup_final_copy=" + a.final_copy]
                           if warm else []) +
                          (["--warmup_throttle=%d" % a.throttle]
                           if how == "warm-throttle" else []))
            wait_for(lambda: "waiting for a VMM" in read(os.path.join(work, "faultline-serve.log")),
                     30, "faultline serve")
        spawn("dst-qemu", qemu_argv("dst", dst_ram, extra))
        dst = cp.EventQmp(os.path.join(work, "dst.qmp"))
        if pager:
            give_pager(dst, sock, "qemu-10.2")
        for q in (src, dst):
            q.ok("migrate-set-capabilities",
                 capabilities=[{"capability": c, "state": True} for c in caps])
        if warm:
            give_dirty_log(src, warm_sock)
        port = free_port()
        dst.ok("migrate-incoming", uri="tcp:127.0.0.1:%d" % port)
        time.sleep(a.churn_s)  # the guest churns meanwhile
        t0 = time.time()
        src.ok("migrate", uri="tcp:127.0.0.1:%d" % port)
        if how == "hybrid":
            # One whole pre-copy pass, then post-copy (libvirt's --postcopy-after-precopy). An
            # idle guest's pre-copy may complete first: then there is no post-copy at all.
            wait_for(lambda: (lambda i: i.get("status") not in ("active", "setup") or
                              (i.get("ram") or {}).get("dirty-sync-count", 0) >= 2)(
                src.ok("query-migrate")), 600, "the first pre-copy pass")
        src.cmd("migrate-start-postcopy")  # the pager's scenarios gate the switch themselves
        final = wait_for(lambda: (lambda s: s if s in ("completed", "failed") else None)(
            dst.ok("query-migrate").get("status")), 1800, "the destination to complete")
        t_done = time.time()
        if final != "completed":
            raise RuntimeError("destination migration failed")
        info = wait_for(lambda: (lambda i: i if i.get("status") in ("completed", "failed")
                                 else None)(src.ok("query-migrate")), 120, "the source to complete")
        # Stop the churn on the destination (its own mailbox), then the destination.
        with open(dst_ram, "r+b") as f:
            f.seek(cp.MAILBOX_GPA + CHURN_STOP)
            f.write(struct.pack("<I", 1))
        wait_for(lambda: "phase=churn" in read(os.path.join(work, "dst.serial")), 120,
                 "the destination's guest to stop churning")
        dst.ok("stop")
        t_stop = src.first_event("STOP", t0 - 1)
        t_resume = dst.first_event("RESUME", t0 - 1)
        res = {"total_s": t_done - t0,
               "switch_to_present_s": t_done - t_stop if t_stop else None,
               "downtime_ms": (t_resume - t_stop) * 1000 if t_stop and t_resume else None,
               "rounds": []}
        if pager:
            serve.wait(timeout=120)
            log = read(os.path.join(work, "faultline-serve.log"))
            start = re.search(r"^\{$", log, re.M)
            stats = json.loads(log[start.start():]) if start else {}
            w = stats.get("warmup") or {}
            res["faults_after_switch"] = w.get("faults_after_switch", stats.get("faults"))
            # A final set fetched before the resume (stop-and-copy) is marked with "*".
            res["rounds"] = [str(r["pages"]) + ("*" if r.get("final_copied") else "") +
                             ("@%d%%" % r["throttle"] if r.get("throttle") else "")
                             for r in w.get("rounds", [])]
        else:
            res["faults_after_switch"] = (info.get("ram") or {}).get("postcopy-requests", 0)
            res["precopy_passes"] = (info.get("ram") or {}).get("dirty-sync-count")
        res["mismatches"] = len(compare(src_ram, dst_ram, size, first, hot_end))
        return res
    finally:
        stop_processes(procs)
        remove_files(src_ram, dst_ram)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size_mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--churn_s", type=float, default=1.0)
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--churn", default="100,0", help="hot blocks to run, permille of the data")
    ap.add_argument("--final_copy", default="20ms",
                    help="faultline serve --warmup_final_copy (the final set fetched before the "
                         "resume when it takes at most this long; 0: left to post-copy)")
    ap.add_argument("--throttle", type=int, default=99,
                    help="faultline-warmup-throttle: serve --warmup_throttle (the most percent)")
    ap.add_argument("--patched_qemu10", default="", help="default: build_qemu.sh --version=10.2")
    ap.add_argument("--qemu10", default="", help="default: build_qemu.sh --version=10.2 --stock")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/qemu-warmup"))
    ap.add_argument("--faultline", default=os.path.join(ROOT, "bazel-bin/cli/faultline"))
    ap.add_argument("--guest",
                    default=os.path.join(ROOT, "bazel-bin/qemu-integration/guest/faultline-guest"))
    a = ap.parse_args()
    kvm_ok, kvm_why = cp.kvm_state()
    if a.accel == "auto":
        a.accel = "kvm" if kvm_ok else "tcg"
    scenarios = a.scenarios.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %s" % s)
    # compare_postcopy's binary resolution, with our scenario names mapped onto its keys.
    a.qemu72, a.patched_qemu72 = "qemu-system-x86_64", ""
    a.bins, a.bin_why = {}, {}
    cp.resolve_binaries(a, [n for n, v in cp.SCENARIOS.items() if v.get("bin") in
                            {SCENARIOS[s][0] for s in scenarios}])
    cells = []
    churns = [int(x) for x in a.churn.split(",")]
    for churn in churns:
        for s in scenarios:
            runs, why = [], None
            for _ in range(a.reps):
                with tempfile.TemporaryDirectory(prefix="qwarm-") as work:
                    try:
                        runs.append(run_cell(a, work, s, churn))
                    except cp.NotApplicable as e:
                        why = str(e)
                        break
            if why:
                cells.append({"scenario": s, "churn_permille": churn, "na": why})
                print("%-20s churn %3d‰ n/a: %s" % (s, churn, why), flush=True)
                continue
            bad = sum(r["mismatches"] for r in runs)
            if bad:
                raise RuntimeError("%s: %d pages differ from the source" % (s, bad))

            def med(k):
                v = [r[k] for r in runs if r.get(k) is not None]
                return statistics.median(v) if v else None
            c = {"scenario": s, "churn_permille": churn, "runs": runs,
                 **{k: med(k) for k in ("faults_after_switch", "switch_to_present_s", "total_s",
                                        "downtime_ms")}}
            cells.append(c)
            print("%-20s churn %3d‰ faults after switch %6s  switch→present %.2f s  total %.2f s"
                  "  downtime %.1f ms  rounds %s" %
                  (s, churn, c["faults_after_switch"], c["switch_to_present_s"] or 0,
                   c["total_s"], c["downtime_ms"] or 0, [r["rounds"] for r in runs]), flush=True)
    load = os.getloadavg()
    res = {"accel": a.accel, "size_mib": a.size_mib, "reps": a.reps, "loadavg": load,
           "final_copy": a.final_copy,
           "churn_s": a.churn_s, "cells": cells}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=2)
    fmt = lambda v, f: (f % v) if v is not None else "n/a"
    lines = ["# Warm-up with QEMU guests (%s, %d MiB, median of %d; load average %.1f; "
             "--warmup_final_copy=%s)" % (a.accel, a.size_mib, a.reps, load[0], a.final_copy), "",
             "| guest | scenario | faults after the switch | switch → all present | total | "
             "downtime | rounds (pages rewritten; *: final set fetched before the resume; "
             "@N%: the throttle asked for with it) |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        guest = "%d‰ rewritten" % c["churn_permille"] if c["churn_permille"] else "idle"
        if "na" in c:
            lines.append("| %s | %s | n/a: %s | | | | |" % (guest, c["scenario"], c["na"]))
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            guest, c["scenario"], fmt(c["faults_after_switch"], "%d"),
            fmt(c["switch_to_present_s"], "%.2f s"), fmt(c["total_s"], "%.2f s"),
            fmt(c["downtime_ms"], "%.1f ms"),
            "; ".join(",".join(str(x) for x in r["rounds"]) for r in c["runs"]) or "—"))
    for churn in churns:
        get = lambda s: next((c for c in cells if c["scenario"] == s and
                              c["churn_permille"] == churn and "na" not in c), None)
        pure, warm = get("faultline-postcopy"), get("faultline-warmup")
        if pure and warm and pure["faults_after_switch"]:
            lines += ["", "%s: faults after the switch with warm-up = %.3f × pure post-copy "
                      "(target ≤ 0.1 for a 10%%-hot guest)" %
                      ("10%-hot" if churn else "idle",
                       warm["faults_after_switch"] / pure["faults_after_switch"])]
        for h in ("qemu10-hybrid", "qemu72-hybrid"):
            hy = get(h)
            if warm and hy:
                lines.append("%s: total with warm-up = %.2f × %s's (target ≤ 1)" %
                             ("10%-hot" if churn else "idle", warm["total_s"] / hy["total_s"], h))
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
