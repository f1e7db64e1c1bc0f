#!/usr/bin/env python3
"""Warm-up against pure post-copy, same machine, same run (issue 19).

With /dev/kvm: `faultline demo` (the reference VMM's KVM guest, KVM's dirty log on the source),
a guest that rewrites a hot block of its memory while the destination warms up (--churn 100 of
1000 pages) and an idle one (0), each migrated with pure post-copy and with --warmup. Without
/dev/kvm (or FAULTLINE_HIDE_KVM=1): `faultline local` (a thread guest; the source's writer is
tracked with userfaultfd write-protect), the same four cells. Every migration compares every
page with the source (a mismatch fails the run).

Reported per cell (median of --reps): faults after the switch, time from the switch to every
page present, total time (warm-up included), downtime (demo only), and the guest's touch p99
after the switch (demo: from its own rdtsc; local: the thread guest's slow touches).

  bench/warmup/compare_warmup.py [--size 1G] [--reps 3] [--out bench/results/warmup]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kvm_here():
    if os.environ.get("FAULTLINE_HIDE_KVM") == "1":
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
        return True
    except OSError:
        return False


def run(binary, mode, churn, warm, size):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [binary, mode, "--size=" + size, "--progress=false", "--stats_json=" + f.name,
               "--churn_permille=%d" % churn]
        if warm:
            cmd.append("--warmup")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout)
            raise RuntimeError("%s failed (rc %d)" % (" ".join(cmd), p.returncode))
        j = json.load(open(f.name))
    if mode == "demo":
        e = j["engine"]
        w = e.get("warmup") or {}
        tsc = j.get("tsc_khz") or 0
        p99 = max((ph["cycles_p99"] for ph in j["guest_phases"]), default=0)
        return {
            "mismatches": j["mismatches"],
            "faults_after_switch": w.get("faults_after_switch", e["faults"]),
            "switch_to_present_s": j["postcopy_seconds"],
            "total_s": j["total_seconds"],
            "downtime_ms": j["downtime_ms"],
            "touch_p99_us": p99 / tsc * 1000 if tsc else None,
            "rounds": [r["pages"] for r in w.get("rounds", [])],
        }
    r = j["faultline_local_run"][0]
    total = r["total_seconds"]
    warm_s = r.get("warmup_seconds", 0) if warm else 0
    slow = r.get("guest_slow_touches", {})
    return {
        "mismatches": r["mismatches"],
        "faults_after_switch": r["faults_after_switch"] if warm else r["faults"],
        "switch_to_present_s": total - warm_s,
        "total_s": total,
        "downtime_ms": None,
        "touch_p99_us": (slow.get("p99_ns") or 0) / 1000,
        "rounds": r.get("warmup_rounds", []),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/warmup"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "bazel-bin/cli/faultline"))
    a = ap.parse_args()
    mode = "demo" if kvm_here() else "local"
    if mode == "demo":
        os.environ.setdefault("FAULTLINE_GUEST_ELF",
                              os.path.join(ROOT, "bazel-bin/qemu-integration/guest/faultline-guest"))
    cells = []
    for churn in (100, 0):
        for warm in (False, True):
            runs = [run(a.binary, mode, churn, warm, a.size) for _ in range(a.reps)]
            bad = sum(r["mismatches"] for r in runs)
            if bad:
                raise RuntimeError("%d pages differ from the source" % bad)

            def med(k):
                v = [r[k] for r in runs if r[k] is not None]
                return statistics.median(v) if v else None

            cells.append({"churn_permille": churn, "warmup": warm, "runs": runs,
                          **{k: med(k) for k in ("faults_after_switch", "switch_to_present_s",
                                                 "total_s", "downtime_ms", "touch_p99_us")}})
            c = cells[-1]
            print("%-6s churn %3d‰ %-9s faults after switch %6s  switch→present %.2f s  total %.2f s"
                  "  downtime %s  rounds %s" % (mode, churn, "warm-up" if warm else "post-copy",
                                                c["faults_after_switch"], c["switch_to_present_s"],
                                                c["total_s"], c["downtime_ms"],
                                                [r["rounds"] for r in runs]), flush=True)
    load = os.getloadavg()
    res = {"mode": mode, "size": a.size, "reps": a.reps, "loadavg": load, "cells": cells}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=2)
    lines = ["# Warm-up vs pure post-copy (`%s`, %s, median of %d; load average %.1f)" %
             (mode, a.size, a.reps, load[0]), "",
             "| guest | mode | faults after the switch | switch → all present | total | downtime | "
             "guest touch p99 | rounds (pages rewritten) |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        fmt = lambda v, f: (f % v) if v is not None else "n/a"
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            "%d‰ rewritten" % c["churn_permille"] if c["churn_permille"] else "idle",
            "warm-up" if c["warmup"] else "post-copy", fmt(c["faults_after_switch"], "%d"),
            fmt(c["switch_to_present_s"], "%.2f s"), fmt(c["total_s"], "%.2f s"),
            fmt(c["downtime_ms"], "%.1f ms"), fmt(c["touch_p99_us"], "%.0f µs"),
            "; ".join(",".join(str(x) for x in r["rounds"]) for r in c["runs"]) or "—"))
    for churn in (100, 0):
        pure = next(c for c in cells if c["churn_permille"] == churn and not c["warmup"])
        warm = next(c for c in cells if c["churn_permille"] == churn and c["warmup"])
        if pure["faults_after_switch"]:
            lines.append("")
            lines.append("%s: faults after the switch with warm-up = %.3f × pure post-copy "
                         "(target ≤ 0.1 for a 10%%-hot guest)" %
                         ("10%-hot" if churn else "idle",
                          warm["faults_after_switch"] / pure["faults_after_switch"]))
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
