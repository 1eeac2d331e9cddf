#!/usr/bin/python3
"""Starts a real nesfd serving clients/web, then runs the browser test
(viewer.test.mjs, playwright-core + Debian's chromium) against it.
Screenshots go to $NESF_WEB_OUT (default <build>/tests/web-out)."""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "clients"))
from nesfd_proc import Nesfd  # noqa: E402

for need, hint in ((os.path.join(here, "node_modules", "playwright-core"), "run scripts/deps.sh test (npm ci)"),
                   (os.environ.get("CHROMIUM", "/usr/bin/chromium"), "run scripts/deps.sh test (chromium)")):
    if not os.path.exists(need):
        print("FAIL %s missing: %s" % (need, hint))
        print("0 passed, 1 failed")
        sys.exit(1)

out = os.environ.get("NESF_WEB_OUT") or os.path.join(os.environ.get("NESF_BUILD_ROOT", here), "tests", "web-out")
with Nesfd() as d:
    env = dict(os.environ, NESFD_URL=d.url, NESF_WEB_OUT=out)
    r = subprocess.run(["node", os.path.join(here, "viewer.test.mjs")], env=env, timeout=600)
    if r.returncode != 0:
        print("nesfd log tail:\n" + d.output())
sys.exit(r.returncode)
