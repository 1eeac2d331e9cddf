#!/usr/bin/python3
"""nesfd soak: many mixed requests, the bad ones of issue 18 included, then
SIGTERM under load.

    soak.py NESFD MKMODEL [REQUESTS]   (default 20000; NESF_SOAK_REQUESTS too)

Runs the daemon on the integration fixture (tests/integration/mkmodel.c) on
a free loopback port and sends REQUESTS requests from 32 clients (each
reuses its connection when the server allows; nesfd closes after every
answer): health/ready/models/metrics, small decodes and encodes drawn
from a fixed set, and refused requests (bad JSON, wrong Content-Type,
unknown routes with and without the token, non-UTF-8 and overlong paths,
wrong methods, bad latents, too much work, and heads the request-head gate
answers: a request line over 8 KiB, a 40 KB header, a chunked body with a
bad chunk size).  Asserts: no 5xx other than
503/504, every answer has X-Request-Id and errors the documented shape,
every decode/encode answer equals the answer to the same request sent
alone beforehand, the expected status for every refused request; then 16
clients keep decoding while SIGTERM arrives, and nesfd must exit 0 within
the grace period.  Standard library only."""
import concurrent.futures
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nesfd_proc  # noqa: E402

NESFD, MKMODEL = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else int(os.environ.get("NESF_SOAK_REQUESTS", "20000"))
SRC = os.environ.get("NESF_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("NESF_SHARED", os.path.join(SRC, "..", "shared"))
TOKEN = "soak-%08x" % random.getrandbits(32)
FAST = {"grid_step": 1.0, "iterations": 8}
LATENT = 192
AUTH = {"Authorization": "Bearer " + TOKEN}
JSON = dict(AUTH, **{"Content-Type": "application/json"})


def latents(n, seed):
    rnd = random.Random(seed)
    return [[rnd.gauss(0, 1) for _ in range(LATENT)] for _ in range(n)]


def start(tmp):
    model = os.path.join(tmp, "fx.safetensors")
    subprocess.run([MKMODEL, model, os.path.join(SHARED, "datasets", "lcs6", "meta.json"), "7"],
                   check=True)
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write(TOKEN + "\n")
    return nesfd_proc.spawn(NESFD, "--model", "fx=" + model, "--compute-threads", "2", "--http-threads", "4",
                            "--max-batch", "16", "--max-delay-us", "2000", "--token-file",
                            os.path.join(tmp, "token"), "--request-timeout", "60", "--shutdown-grace", "10",
                            "--quiet")


class Client:
    """One keep-alive connection; reconnects after the server closes it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def send(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


def strip_ids(v):
    if isinstance(v, dict):
        return {k: strip_ids(x) for k, x in v.items() if k not in ("request_id", "batch")}
    if isinstance(v, list):
        return [strip_ids(x) for x in v]
    return v


def requests_table():
    """(name, method, path, body bytes, headers, expected status or None).
    Answers are compared without request_id and batch (the batch size)."""
    good = [("health", "GET", "/health", None, {}, 200), ("ready", "GET", "/ready", None, AUTH, 200),
            ("models", "GET", "/models", None, AUTH, 200), ("metrics", "GET", "/metrics", None, AUTH, 200)]
    fixed = []
    for i in range(16):
        body = {"latents": latents(1 + i % 2, 100 + i), "options": FAST}
        fixed.append(("decode%d" % i, "POST", "/decode", json.dumps(body).encode(), JSON, 200))
    with open(os.path.join(SHARED, "datasets", "lcs6", "val.jsonl")) as f:
        structs = [json.loads(next(f)) for _ in range(4)]
    for i in range(4):  # refined (the default) by 2 steps instead of 40: as many requests, less compute
        fixed.append(("encode%d" % i, "POST", "/encode",
                      json.dumps({"structures": structs[i:i + 1], "refine": 2}).encode(), JSON, 200))
    z = latents(1, 9)[0]
    bad = [("bad_json", "POST", "/decode", b'{"latents": [[1, 2,', JSON, 400),
           ("text_plain", "POST", "/decode", json.dumps({"latents": [z]}).encode(),
            dict(AUTH, **{"Content-Type": "text/plain"}), 415),
           ("no_route", "GET", "/no/such/route", None, AUTH, 404),
           ("no_route_no_token", "GET", "/no/such/route", None, {}, 401),
           ("no_token", "POST", "/decode", json.dumps({"latents": [z]}).encode(),
            {"Content-Type": "application/json"}, 401),
           ("pct_ff", "GET", "/%ff", None, AUTH, 404), ("pct_00", "GET", "/%00", None, AUTH, 404),
           ("long_path", "GET", "/" + "a" * 1100, None, AUTH, 414),
           ("wrong_method", "GET", "/decode", None, AUTH, 405),
           ("short_latent", "POST", "/decode", json.dumps({"latents": [z[:100]]}).encode(), JSON, 400),
           ("huge_latent", "POST", "/decode", json.dumps({"latents": [[1e39] * LATENT]}).encode(), JSON, 400),
           ("too_much_work", "POST", "/decode", json.dumps(
               {"latents": latents(8, 1), "options": {"mode": "paper", "iterations": 4096}}).encode(), JSON, 413),
           ("unknown_model", "POST", "/decode", json.dumps({"model": "\u00e9" * 300, "latents": [z]}).encode(),
            JSON, 404),
           # heads that libmicrohttpd would answer in HTML: the gate's JSON
           ("long_line", "GET", "/" + "a" * 9000, None, AUTH, 414),
           ("big_head", "GET", "/health", None, {"X-Pad": "a" * 40000}, 431),
           ("bad_chunk", "POST", "/decode", b"zz\r\n{}\r\n0\r\n\r\n",
            dict(JSON, **{"Transfer-Encoding": "chunked"}), 411)]
    return good, fixed, bad


def check_answer(item, st, hdrs, data, ref, problems):
    name, _, _, _, _, want = item
    if st >= 500 and st not in (503, 504):
        problems.append("%s: %d %r" % (name, st, data[:200]))
        return
    if "x-request-id" not in hdrs:
        problems.append("%s: no X-Request-Id" % name)
    if st in (503, 504):
        return  # backpressure: allowed, counted
    if want is not None and st != want:
        problems.append("%s: status %d, expected %d: %r" % (name, st, want, data[:200]))
        return
    if st >= 400:
        try:
            err = json.loads(data)["error"]
            assert err["code"] and err["message"] and err["request_id"] == hdrs["x-request-id"]
        except (ValueError, KeyError, AssertionError, TypeError):
            problems.append("%s: error not in the documented shape: %r" % (name, data[:200]))
    elif name in ref and strip_ids(json.loads(data)) != ref[name]:
        problems.append("%s: answer differs from the request sent alone" % name)


def soak(port, good, fixed, bad, ref):
    rnd = random.Random(18)
    plan = []
    for _ in range(N):
        x = rnd.random()
        # decodes are the costly part: 12 % (of 1-2 latents), encodes 5 %
        pool = good if x < 0.5 else fixed[:16] if x < 0.62 else fixed[16:] if x < 0.67 else bad
        plan.append(pool[rnd.randrange(len(pool))])
    problems, counts, lock = [], {}, threading.Lock()
    chunks = [plan[i::32] for i in range(32)]

    def worker(items):
        c, local = Client(port), []
        for item in items:
            st, hdrs, data = c.send(item[1], item[2], item[3], item[4])
            check_answer(item, st, hdrs, data, ref, local)
            with lock:
                counts[st] = counts.get(st, 0) + 1
        with lock:
            problems.extend(local)

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        for f in [ex.submit(worker, ch) for ch in chunks]:
            f.result()
    return problems, counts, time.time() - t0


def sigterm_under_load(proc, port, fixed):
    stop = threading.Event()
    seen = []

    def load():
        c = Client(port)
        while not stop.is_set():
            item = fixed[random.randrange(16)]
            try:
                st, _, _ = c.send(item[1], item[2], item[3], item[4])
                seen.append(st)
            except OSError:
                return  # the port closed: the daemon is draining

    threads = [threading.Thread(target=load, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    stop.set()
    for t in threads:
        t.join(5)
    return rc, time.time() - t0, seen


def main():
    tmp = tempfile.mkdtemp(prefix="nesfd-soak-")
    proc = None
    try:
        proc, port, lines = start(tmp)
        good, fixed, bad = requests_table()
        ref, c = {}, Client(port)
        for item in fixed:  # the same requests, each alone
            st, _, data = c.send(item[1], item[2], item[3], item[4])
            assert st == 200, (item[0], st, data[:300])
            ref[item[0]] = strip_ids(json.loads(data))
        problems, counts, secs = soak(port, good, fixed, bad, ref)
        print("%d requests in %.1f s (%.0f/s): %s" % (N, secs, N / secs, dict(sorted(counts.items()))))
        for p in problems[:20]:
            print("FAIL:", p)
        rc, stop_s, seen = sigterm_under_load(proc, port, fixed)
        bad5xx = [s for s in seen if s >= 500 and s not in (503, 504)]
        print("SIGTERM under load: exit %d after %.1f s; answers while stopping: %s"
              % (rc, stop_s, {s: seen.count(s) for s in sorted(set(seen))}))
        ok = not problems and rc == 0 and not bad5xx and stop_s < 15
        if not ok:
            print("".join(lines[-20:]))
        print("soak %s" % ("passed" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
