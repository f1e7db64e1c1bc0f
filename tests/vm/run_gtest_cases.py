#!/usr/bin/env python3
"""Runs a gtest binary one case at a time, each under its own timeout, and writes one XML.

Inside the KVM VM (nested SVM under TCG) a guest now and then hangs in a way the host never
shows; run as one process, that hang would cost the whole binary its results. Here a case
that does not finish within --timeout is killed and recorded as failed ("timed out"), and the
other cases still run.

The VM's own kernel also dies now and then under TCG (run_kvm_tests.sh boots it again): each
case's start and result go to OUT_XML.journal as they happen, so a run started again after a
boot resumes where the last one stopped — the cases with a result keep it, the case the kernel
died in runs once more, and a case the kernel died in twice is recorded as failed with that
reason instead of taking every later boot with it.

  run_gtest_cases.py EXE OUT_XML [--timeout=S] [--filter=A.b:C.d] [--log=FILE]
                     [--skip=A.b=REASON ...]

--skip records a case as skipped with REASON instead of running it (the summary counts it).

Exit status: 0 when every case passed (or skipped), 1 otherwise.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET


def list_cases(exe, flt):
    args = [exe, '--gtest_list_tests'] + (['--gtest_filter=' + flt] if flt else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    cases, suite = [], None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(' '):
            suite = line.split('#')[0].strip()
        else:
            cases.append(suite + line.split('#')[0].strip())
    return cases


class Journal:
    """OUT_XML.journal: one JSON line per event, flushed to disk before the case runs on."""

    def __init__(self, path):
        self.results = {}  # case -> XML text of its <testcase>
        # case -> boots whose kernel died while it ran: a start with no result after it
        self.deaths = collections.Counter()
        started = None
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by the kernel's death
                    if e.get('started'):
                        if started is not None:
                            self.deaths[started] += 1
                        started = e['started']
                    elif 'case' in e:
                        self.results[e['case']] = e['xml']
                        started = None
        if started is not None:
            self.deaths[started] += 1
        self.f = open(path, 'a')

    def write(self, **e):
        self.f.write(json.dumps(e) + '\n')
        self.f.flush()
        os.fsync(self.f.fileno())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('exe')
    ap.add_argument('out_xml')
    ap.add_argument('--timeout', type=int, default=600)
    ap.add_argument('--filter', default='')
    ap.add_argument('--log', default='')
    ap.add_argument('--skip', action='append', default=[])
    a = ap.parse_args()
    skips = dict(x.split('=', 1) for x in a.skip)
    log = open(a.log, 'a') if a.log else sys.stdout
    root = ET.Element('testsuites')
    ok = True
    try:
        cases = list_cases(a.exe, a.filter)
    except (subprocess.SubprocessError, OSError) as e:
        cases = []
        ok = False
        suite = ET.SubElement(root, 'testsuite', name='(list)')
        tc = ET.SubElement(suite, 'testcase', classname='(list)', name='gtest_list_tests')
        ET.SubElement(tc, 'failure', message='could not list the cases: %s' % e)
    journal = Journal(a.out_xml + '.journal')
    suites = {}
    for i, case in enumerate(cases):
        suite_name, name = case.rsplit('.', 1)
        suite = suites.setdefault(suite_name, ET.SubElement(root, 'testsuite', name=suite_name))
        if case in skips:
            got = ET.Element('testcase', classname=suite_name, name=name)
            ET.SubElement(got, 'skipped', message=skips[case])
            log.write('--- %s: skipped: %s\n' % (case, skips[case]))
        elif case in journal.results:
            got = ET.fromstring(journal.results[case])
            log.write('--- %s: result from an earlier boot\n' % case)
        elif journal.deaths[case] >= 2:
            got = ET.Element('testcase', classname=suite_name, name=name)
            ET.SubElement(got, 'failure', message=(
                '%s: the VM\'s kernel died while this case ran, %d times (see the boots\' '
                'console logs); not run again' % (case, journal.deaths[case])))
            log.write('--- %s: the kernel died in it %d times; recorded as failed\n'
                      % (case, journal.deaths[case]))
        else:
            if journal.deaths[case]:
                log.write('--- %s: the VM\'s kernel died while it ran; running it again\n' % case)
            journal.write(started=case)
            got = run_case(a, log, i, case, suite_name, name)
            if journal.deaths[case]:
                got.set('fl_note', 'second run: the VM\'s kernel died during the first (see the '
                        'boots\' console logs)')
            journal.write(case=case, xml=ET.tostring(got, encoding='unicode'))
        if got.find('failure') is not None or got.find('error') is not None:
            ok = False
        suite.append(got)
    ET.ElementTree(root).write(a.out_xml)
    return 0 if ok else 1


def run_case(a, log, i, case, suite_name, name):
    """Runs one case in its own process; returns its <testcase> (a failure when it has none)."""
    part_xml = '%s.case%d.xml' % (a.out_xml, i)
    if os.path.exists(part_xml):
        os.unlink(part_xml)
    log.write('--- %s\n' % case)
    log.flush()
    try:
        rc = subprocess.run([a.exe, '--gtest_filter=' + case, '--gtest_output=xml:' + part_xml],
                            stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout).returncode
        why = 'exit status %d' % rc
    except subprocess.TimeoutExpired:
        rc, why = 124, 'timed out after %d s in the VM (killed; the other cases ran)' % a.timeout
    got = None
    if os.path.exists(part_xml):
        try:
            for tc in ET.parse(part_xml).getroot().iter('testcase'):
                if tc.get('status') != 'notrun':
                    got = tc
        except ET.ParseError:
            got = None
        os.unlink(part_xml)
    if got is None:
        # Killed, crashed or aborted before gtest wrote its XML.
        got = ET.Element('testcase', classname=suite_name, name=name)
        ET.SubElement(got, 'failure', message='%s: no result written (%s)' % (case, why))
    elif rc != 0 and got.find('failure') is None:
        ET.SubElement(got, 'failure', message='%s: %s after the case' % (case, why))
    return got


if __name__ == '__main__':
    sys.exit(main())
