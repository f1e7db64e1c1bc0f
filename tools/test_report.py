#!/usr/bin/env python3
"""Collects what every part of tools/test.sh ran, case by case, and prints the summary.

Results are one line per test case in a TSV file (tools/test.sh passes its path to every
suite as $FAULTLINE_RESULTS):

    STATUS <tab> PART <tab> NAME <tab> REASON        STATUS: pass | fail | skip

Subcommands:
  bazel PART BAZEL_LOG TESTLOGS_DIR RESULTS
      Every target `bazel test` reported (PASSED, FAILED, TIMEOUT, NO STATUS, FAILED TO BUILD),
      expanded into its gtest cases from the test.xml Bazel keeps: a case skipped inside a
      passing target is counted as skipped, with the message its GTEST_SKIP gave.
  gtest PART XML RESULTS [--target=//pkg:name] [--where=TEXT] [--retry=XML]
      The cases of one gtest XML file (a test binary run outside Bazel, e.g. inside a VM).
      With --retry, the XML of a second run of the cases that failed: a case that passes there
      counts as passed, its reason saying it needed a second run and why the first failed.
  add STATUS PART NAME REASON RESULTS
      One record (a suite, or a case of a suite, that is not a gtest).
  lines PART RESULTS < OUTPUT
      The "PASS: what ...", "FAIL: what ..." and "SKIP: what (why)" lines of a suite's output,
      one record each (the QEMU and libvirt suites print these).
  summary RESULTS
      One line per skipped and per failed case with its reason, then the closing line
      "N passed, N failed, N skipped". Exit status 1 if anything failed.

Merging: records with the same PART and NAME are one case. A case that ran anywhere (pass or
fail) is not also counted as skipped — a KVM test skipped on a host without /dev/kvm and run in
the KVM VM counts once, as it ran there. A skip whose reason contains "[setup]" is one the
machine could have avoided (huge pages not reserved, a tool that tools/setup.sh installs): it
counts as failed.
"""
import collections
import os
import re
import sys
import xml.etree.ElementTree as ET

STATUS_RE = re.compile(
    r"^(//\S+)\s+(?:\(cached\)\s+)?(PASSED|FAILED TO BUILD|FAILED|TIMEOUT|NO STATUS|FLAKY|SKIPPED)\b")


def clean(text):
    return " ".join((text or "").split()).replace("\t", " ")


def write(results, status, part, name, reason=""):
    with open(results, "a") as f:
        f.write(f"{status}\t{part}\t{clean(name)}\t{clean(reason)}\n")


def gtest_cases(xml_path):
    """Yields (case name, status, reason) of one gtest XML file."""
    root = ET.parse(xml_path).getroot()
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname')}.{tc.get('name')}"
        failures = tc.findall("failure") + tc.findall("error")
        skipped = tc.find("skipped")
        if failures:
            msg = failures[0].get("message") or failures[0].text or ""
            yield name, "fail", msg.splitlines()[0] if msg else "failed"
        elif skipped is not None or tc.get("result") == "skipped":
            msg = skipped.get("message", "") if skipped is not None else ""
            # gtest prefixes the message with "file:line\n"; keep the reason.
            lines = [l for l in msg.splitlines() if l.strip()]
            if lines and re.match(r"^\S+:\d+$", lines[0].strip()):
                lines = lines[1:]
            yield name, "skip", " ".join(lines) or "skipped"
        elif tc.get("status") == "notrun":
            continue  # DISABLED_ tests
        else:
            # tests/vm/run_gtest_cases.py notes a case that passed in a boot after the VM's
            # kernel died while it ran.
            yield name, "pass", tc.get("fl_note", "")


def cmd_bazel(part, log, testlogs, results):
    targets = collections.OrderedDict()
    with open(log, errors="replace") as f:
        for line in f:
            m = STATUS_RE.match(line)
            if m:
                targets[m.group(1)] = m.group(2)
    if not targets:
        write(results, "fail", part, "bazel test", f"no test results in {log} (build error?)")
        return
    for target, status in targets.items():
        rel = target[2:].replace(":", "/")
        xml = os.path.join(testlogs, rel, "test.xml")
        cases = []
        if status in ("PASSED", "FLAKY") and os.path.exists(xml):
            try:
                cases = list(gtest_cases(xml))
            except ET.ParseError as e:
                cases = [("(test.xml)", "fail", f"unreadable test.xml: {e}")]
        if status in ("PASSED", "FLAKY"):
            if not cases:
                cases = [("", "pass", "")]
            for name, st, reason in cases:
                write(results, st, part, f"{target} {name}".strip(), reason)
        elif status == "SKIPPED":
            write(results, "skip", part, target, "skipped by Bazel (tag filter or build failure)")
        else:
            reason = status.lower()
            if os.path.exists(xml) and status == "FAILED":
                try:
                    failed = [n for n, st, _ in gtest_cases(xml) if st == "fail"]
                    if failed:
                        reason = "failed: " + ", ".join(failed[:5])
                except ET.ParseError:
                    pass
            write(results, "fail", part, target, reason)


def cmd_gtest(part, xml, results, target="", where="", retry=""):
    if not os.path.exists(xml):
        write(results, "fail", part, target or xml, f"no gtest XML at {xml} (the binary did not run?)")
        return
    try:
        cases = list(gtest_cases(xml))
    except ET.ParseError as e:
        write(results, "fail", part, target or xml, f"unreadable gtest XML: {e}")
        return
    second = {}
    if retry and os.path.exists(retry):
        try:
            second = {n: (st, r) for n, st, r in gtest_cases(retry)}
        except ET.ParseError:
            second = {}
    for i, (name, st, reason) in enumerate(cases):
        if st == "fail" and second.get(name, ("", ""))[0] == "pass":
            cases[i] = (name, "pass", f"passed on a second run; the first failed: {reason}")
    for name, st, reason in cases:
        if st == "pass" and where:
            reason = f"{where}; {reason}" if reason else where
        write(results, st, part, f"{target} {name}".strip(), reason)


LINE_RE = re.compile(r"^(PASS|FAIL|SKIP):\s*(.*)$")


def cmd_lines(part, results, stream):
    n = 0
    for line in stream:
        m = LINE_RE.match(line.strip())
        if not m:
            continue
        text = m.group(2)
        name = re.split(r"[:,(]| — ", text, maxsplit=1)[0].strip()[:80] or text[:80]
        write(results, m.group(1).lower(), part, name, text)
        n += 1
    return n


def cmd_summary(results):
    cases = collections.OrderedDict()  # (part, name) -> list of (status, reason)
    if os.path.exists(results):
        with open(results, errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 3:
                    continue
                status, part, name = fields[:3]
                reason = fields[3] if len(fields) > 3 else ""
                cases.setdefault((part, name), []).append((status, reason))
    passed, failed, skipped = 0, [], []
    for (part, name), recs in cases.items():
        ran = [r for r in recs if r[0] in ("pass", "fail")]
        fails = [r for r in recs if r[0] == "fail"]
        if fails:
            failed.append((part, name, fails[0][1]))
        elif ran:
            passed += 1
        else:
            reason = recs[-1][1]  # the last place that tried says most (e.g. the KVM VM)
            if "[setup]" in reason:
                failed.append((part, name, "skipped for a reason this machine could fix: " + reason))
            else:
                skipped.append((part, name, reason))
    for part, name, reason in skipped:
        print(f"SKIP [{part}] {name}: {reason}")
    for part, name, reason in failed:
        print(f"FAIL [{part}] {name}: {reason}")
    print(f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "bazel" and len(args) == 4:
        cmd_bazel(*args)
    elif cmd == "gtest" and len(args) >= 3:
        opts = dict(a[2:].split("=", 1) for a in args[3:] if a.startswith("--") and "=" in a)
        cmd_gtest(args[0], args[1], args[2], opts.get("target", ""), opts.get("where", ""),
                  opts.get("retry", ""))
    elif cmd == "add" and len(args) == 5:
        write(args[4], args[0], args[1], args[2], args[3])
    elif cmd == "lines" and len(args) == 2:
        if cmd_lines(args[0], args[1], sys.stdin) == 0:
            write(args[1], "fail", args[0], "suite output", "no PASS/FAIL/SKIP line")
    elif cmd == "summary" and len(args) == 1:
        return cmd_summary(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
