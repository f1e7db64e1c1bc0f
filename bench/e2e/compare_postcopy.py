#!/usr/bin/env python3
"""Side by side on one machine, one run: QEMU's own post-copy vs faultline, same guest.

The guest is qemu-integration/guest (a freestanding PVH kernel): it writes a pattern into every
page, then times sequential, random and hot-set reads with rdtsc and reports them on the
serial port. Each scenario migrates it after its dirty phase, so every touch phase runs on
the destination while memory arrives:

  qemu-postcopy          QEMU (Debian's qemu-system-x86_64, -accel kvm) migrate +
                         migrate-start-postcopy over loopback TCP
  qemu-postcopy-preempt  the same with the postcopy-preempt capability (urgent pages on
                         their own channel, QEMU >= 7.1)
  faultline              `faultline demo`: the reference VMM on KVM, faultline pulling pages
                         from the source page server

Both VMMs use KVM with the same guest configuration (a mailbox preloaded at 0x5000 for QEMU,
written by the VMM for faultline). Outputs: results.json, results.md, latency.png (gnuplot).
Usage: compare_postcopy.py --faultline BIN --guest ELF [--size-mib 256] [--touches 4096]
       [--out DIR] [--scenarios qemu-postcopy,qemu-postcopy-preempt,faultline]
"""
import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

MAILBOX_GPA = 0x5000


def cpu_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 0


def mailbox(ram, seed, touches):
    # guest_abi.h: magic, version, ram_size, seed, touches, slow_cycles, mode, rounds, num_cpus
    head = struct.pack("<IIQQQQIII", 0x4D544C46, 1, ram, seed, touches, 0, 0xF, 1, 1)
    return head + b"\0" * (128 + 64 * 8 - len(head))


class Qmp:
    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"{name}: {msg['error']}")


def wait_line(path, pattern, timeout):
    deadline = time.time() + timeout
    rx = re.compile(pattern)
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                for line in f:
                    if rx.search(line):
                        return line
        time.sleep(0.05)
    raise TimeoutError(f"no line matching {pattern!r} in {path}")


def parse_phases(text):
    phases = []
    for line in text.splitlines():
        m = re.search(r"FLT cpu=(\d+) phase=(seq|random|hot) .*", line)
        if not m:
            continue
        kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
        phases.append({"cpu": int(kv["cpu"]), "phase": kv["phase"],
                       **{k: int(kv[k]) for k in ("touches", "cycles_p50", "cycles_p99",
                                                  "cycles_max", "cycles_total", "slow", "bad")}})
    return phases


def run_qemu(args, work, preempt):
    ram = args.size_mib << 20
    mb = os.path.join(work, "mailbox.bin")
    with open(mb, "wb") as f:
        f.write(mailbox(ram, args.seed, args.touches))
    port = 20000 + os.getpid() % 20000
    common = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", f"{args.size_mib}M",
              "-object", f"memory-backend-memfd,id=mem,size={args.size_mib}M,share=on",
              "-machine", "pc,memory-backend=mem", "-nographic", "-no-reboot",
              "-monitor", "none", "-display", "none",
              "-device", "isa-debug-exit,iobase=0x501", "-kernel", args.guest,
              "-device", f"loader,file={mb},addr={MAILBOX_GPA},force-raw=on"]
    logs = {s: os.path.join(work, f"{s}.serial") for s in ("src", "dst")}
    qmps = {s: os.path.join(work, f"{s}.qmp") for s in ("src", "dst")}
    procs = {}
    try:
        procs["dst"] = subprocess.Popen(common + ["-serial", f"file:{logs['dst']}", "-qmp",
                                                  f"unix:{qmps['dst']},server=on,wait=off",
                                                  "-incoming", "defer"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs["src"] = subprocess.Popen(common + ["-serial", f"file:{logs['src']}", "-qmp",
                                                  f"unix:{qmps['src']},server=on,wait=off"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        src, dst = Qmp(qmps["src"]), Qmp(qmps["dst"])
        caps = [{"capability": "postcopy-ram", "state": True}]
        if preempt:
            caps.append({"capability": "postcopy-preempt", "state": True})
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
        dst.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        boot = wait_line(logs["src"], r"FLT cpu=0 boot", 60)
        if "abi=vmm" not in boot:
            raise RuntimeError("the guest did not see the preloaded mailbox: " + boot)
        wait_line(logs["src"], r"FLT cpu=0 phase=dirty", 600)
        t0 = time.time()
        src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        src.cmd("migrate-start-postcopy")
        info = {}
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.02)
        t_done = time.time() - t0
        if info.get("status") != "completed":
            raise RuntimeError(f"QEMU migration {info.get('status')}")
        wait_line(logs["dst"], r"FLT done", 600)
        with open(logs["dst"], errors="replace") as f:
            dst_text = f.read()
        ram_stats = info.get("ram", {})
        return {"total_seconds": info.get("total-time", t_done * 1000) / 1000.0,
                "downtime_ms": info.get("downtime"),
                "pages_requested": ram_stats.get("postcopy-requests"),
                "bytes_transferred": ram_stats.get("transferred"),
                "guest_phases": parse_phases(dst_text),
                "verified": "bad=0" in dst_text and "FLT done cpus=1 bad=0" in dst_text}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def run_faultline(args, work):
    out = os.path.join(work, "faultline.json")
    env = dict(os.environ, FAULTLINE_GUEST_ELF=args.guest)
    r = subprocess.run([args.faultline, "demo", f"--size={args.size_mib}M",
                        f"--guest_touches={args.touches}", "--progress=false",
                        f"--stats_json={out}"], env=env, capture_output=True, text=True,
                       timeout=1200)
    if r.returncode != 0:
        raise RuntimeError("faultline demo failed:\n" + r.stdout + r.stderr)
    with open(out) as f:
        j = json.load(f)
    e = j["engine"]
    return {"total_seconds": j["total_seconds"], "downtime_ms": j["downtime_ms"],
            "pages_requested": e["urgent_requests"], "bytes_transferred": e["bytes_received"],
            "guest_phases": j["guest_phases"],
            "engine_fault_latency": e["fault_latency"],
            "verified": j["mismatches"] == 0 and j["guest_bad_reads"] == 0,
            "verified_pages": j["verified_pages"]}


def us(cycles, khz):
    return cycles * 1000.0 / khz if khz else float("nan")


def markdown(results, khz, args):
    rows = ["| scenario | total | downtime | pages requested | guest touch mean (seq / random / hot) | guest slow touches (>80 µs) | max touch | verified |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error'].splitlines()[0]} | | | | | | |")
            continue
        ph = {p["phase"]: p for p in r["guest_phases"] if p["cpu"] == 0}
        mean = " / ".join(f"{us(ph[k]['cycles_total'] / max(1, ph[k]['touches']), khz):.0f} µs"
                          for k in ("seq", "random", "hot") if k in ph)
        slow = " / ".join(str(ph[k]["slow"]) for k in ("seq", "random", "hot") if k in ph)
        mx = max((p["cycles_max"] for p in r["guest_phases"]), default=0)
        rows.append(f"| {name} | {r['total_seconds']:.2f} s | {float(r['downtime_ms'] or 0):.1f} ms | "
                    f"{r['pages_requested']} | {mean} | {slow} | {us(mx, khz) / 1000:.1f} ms | "
                    f"{'yes' if r['verified'] else 'NO'} |")
    return "\n".join(rows) + "\n"


def plot(results, khz, out_png, work):
    if not shutil.which("gnuplot"):
        return False
    dat = os.path.join(work, "bars.dat")
    with open(dat, "w") as f:
        f.write("# scenario seq random hot\n")
        for name, r in results.items():
            if "error" in r:
                continue
            ph = {p["phase"]: p for p in r["guest_phases"] if p["cpu"] == 0}
            vals = [us(ph[k]["cycles_total"] / max(1, ph[k]["touches"]), khz) if k in ph else 0
                    for k in ("seq", "random", "hot")]
            f.write(f"{name} " + " ".join(f"{v:.1f}" for v in vals) + "\n")
    script = f"""set terminal png size 900,500
set output '{out_png}'
set title 'Guest-observed mean touch time while memory arrives (lower is better)'
set style data histograms
set style histogram clustered
set style fill solid 0.8
set ylabel 'µs per touch'
set yrange [0:*]
set xtics font ',9'
set key top left
plot '{dat}' using 2:xtic(1) title 'seq', '' using 3 title 'random', '' using 4 title 'hot'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=False)
    return os.path.exists(out_png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faultline")
    ap.add_argument("--guest")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--touches", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--scenarios", default="qemu-postcopy,qemu-postcopy-preempt,faultline")
    ap.add_argument("--replot", help="redraw results.md/latency.png from a results.json")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    khz = cpu_khz()
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        work = tempfile.mkdtemp(prefix="flt-replot-")
        khz = saved["machine"]["cpu_khz"]
        plot(saved["results"], khz, os.path.abspath(os.path.join(args.out, "latency.png")), work)
        print(markdown(saved["results"], khz, args))
        return 0
    results = {}
    for name in args.scenarios.split(","):
        work = tempfile.mkdtemp(prefix=f"flt-{name}-")
        print(f"== {name} ({args.size_mib} MiB guest)", flush=True)
        try:
            if name == "faultline":
                results[name] = run_faultline(args, work)
            else:
                results[name] = run_qemu(args, work, preempt=name.endswith("preempt"))
        except Exception as e:  # a scenario that cannot run here is reported, not hidden
            results[name] = {"error": str(e)}
        print(json.dumps(results[name], indent=1)[:2000], flush=True)
    machine = {"cpu_khz": khz, "cores": os.cpu_count(), "kernel": os.uname().release,
               "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]
               if shutil.which("qemu-system-x86_64") else None,
               "date": time.strftime("%Y-%m-%d")}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "size_mib": args.size_mib, "touches": args.touches,
                   "results": results}, f, indent=2)
    md = markdown(results, khz, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"Machine: {machine}\n\n{md}")
    png = plot(results, khz, os.path.abspath(os.path.join(args.out, "latency.png")), work)
    print(md)
    print(f"wrote {args.out}/results.json, results.md" + (", latency.png" if png else ""))
    return 0 if all("error" not in r and r["verified"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
