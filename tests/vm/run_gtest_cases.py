#!/usr/bin/env python3
"""Runs a gtest binary one case at a time, each under its own timeout, and writes one XML.

Inside the KVM VM (nested SVM under TCG) a guest now and then hangs in a way the host never
shows; run as one process, that hang would cost the whole binary its results. Here a case
that does not finish within --timeout is killed and recorded as failed ("timed out"), and the
other cases still run.

  run_gtest_cases.py EXE OUT_XML [--timeout=S] [--filter=A.b:C.d] [--log=FILE]

Exit status: 0 when every case passed (or skipped), 1 otherwise.
"""
import argparse
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('exe')
    ap.add_argument('out_xml')
    ap.add_argument('--timeout', type=int, default=600)
    ap.add_argument('--filter', default='')
    ap.add_argument('--log', default='')
    a = ap.parse_args()
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
    suites = {}
    for i, case in enumerate(cases):
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
        suite_name, name = case.rsplit('.', 1)
        suite = suites.setdefault(suite_name, ET.SubElement(root, 'testsuite', name=suite_name))
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
        if got.find('failure') is not None or got.find('error') is not None:
            ok = False
        suite.append(got)
    ET.ElementTree(root).write(a.out_xml)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
