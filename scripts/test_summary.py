#!/usr/bin/env python3
"""Totals the suite from meson testlog.json files: cmocka binaries count
each of their tests, any other test counts as one.  Prints a plain
"N passed, N failed" line and cmocka-style totals; exit 1 on any failure."""
import json, re, sys

passed = failed = skipped = 0
failures = []
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failures.append(f"{path} missing")
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        out = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
        ok = t.get("result") in ("OK", "EXPECTEDFAIL")
        if "[==========] Running" in out:
            p = len(re.findall(r"^\[       OK \] ", out, re.M))
            f = re.findall(r"^\[  (?:FAILED|ERROR) +\] (?!\d+ test)(\S+)", out, re.M)
            s = len(re.findall(r"^\[  SKIPPED \] (?!\d+ test)", out, re.M))
            passed += p
            skipped += s
            failed += len(f)
            failures += [f"{t['name']}: {x}" for x in f]
            if not ok and not f:  # crashed or timed out mid-run
                failed += 1
                failures.append(f"{t['name']} ({t.get('result')})")
        elif t.get("result") == "SKIP":
            skipped += 1
        elif ok:
            passed += 1
        else:
            failed += 1
            failures.append(f"{t['name']} ({t.get('result')})")
for f in failures:
    print(f"FAILED: {f}")
print(f"nesf: {passed} passed, {failed} failed, {skipped} skipped")
print(f"[==========] {passed + failed + skipped} test(s) run.")
print(f"[  PASSED  ] {passed} test(s).")
if skipped:
    print(f"[  SKIPPED ] {skipped} test(s).")
if failed:
    print(f"[  FAILED  ] {failed} test(s).")
sys.exit(1 if failed else 0)
