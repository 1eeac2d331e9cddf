#!/usr/bin/python3
"""nesfd's request-head gate (server/gate.c) over raw sockets.

    test_gate.py NESFD MKMODEL

What libmicrohttpd would answer itself with an HTML page and no request id
(a request line or head too long, a malformed request line or header line,
HTTP versions other than 1.0/1.1, a head that never completes, a chunked
body, a bad chunk size) gets nesfd's JSON error shape with X-Request-Id
(the caller's own, when it sent a sane one and the head is readable) and,
for an allowed Origin, the CORS headers of every other answer; the daemon
keeps answering; heads at the gate's limits still pass;
clients that reuse connections (http.client) get right answers; a second
request on one connection is never read; the per-client connection limit
answers 503; no descriptor is left behind; SIGTERM exits 0.  Standard
library only, a few seconds."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nesfd_proc  # noqa: E402

NESFD, MKMODEL = sys.argv[1], sys.argv[2]
SRC = os.environ.get("NESF_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("NESF_SHARED", os.path.join(SRC, "..", "shared"))
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FAST = {"grid_step": 1.0, "iterations": 8}
PER_CLIENT = 8
ORIGIN = "https://viewer.example"  # --cors-origin
CORS = {"access-control-allow-origin": ORIGIN, "vary": "Origin",
        "access-control-expose-headers": "X-Request-Id, Retry-After"}  # as http.c sends them
SENT_IDS = set()  # the ids the tests send and expect back (in the gate's log lines too)


class Daemon:
    def __init__(self, *args):
        self.proc, self.port, self.lines = nesfd_proc.spawn(NESFD, *args)

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def stop(self):
        """SIGSTOP, returning once every thread is stopped (delivery is
        asynchronous)."""
        self.proc.send_signal(signal.SIGSTOP)
        task = "/proc/%d/task" % self.proc.pid
        for _ in range(1000):
            states = []
            for t in os.listdir(task):
                with open(os.path.join(task, t, "stat")) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            if all(st == "T" for st in states):
                return
            time.sleep(0.005)
        raise RuntimeError("the daemon did not stop: %s" % states)


def raw(d, data, src="127.0.0.1", wait=10, pause=None, before_accept=False):
    """Sends data (a list: pieces with `pause` s between), reads to EOF:
    (status, headers, body bytes, whole answer).  before_accept: the daemon
    is stopped (SIGSTOP) while the client connects and sends, so the whole
    head is queued before the daemon can accept (the kernel completes the
    handshake from the backlog); otherwise which comes first is a race."""
    s = socket.socket()
    s.settimeout(wait)
    s.bind((src, 0))
    if before_accept:
        d.stop()
    try:
        s.connect(("127.0.0.1", d.port))
        for i, piece in enumerate(data if isinstance(data, list) else [data]):
            if i and pause:
                time.sleep(pause)
            s.sendall(piece)
        if before_accept:
            d.proc.send_signal(signal.SIGCONT)
            before_accept = False
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    finally:
        if before_accept:
            d.proc.send_signal(signal.SIGCONT)
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    return status, hdrs, body, got


def expect(resp, status, code, oip=False, rid=None, cors=False):
    """The documented shape: JSON, request id in body and header (rid, else
    a fresh UUID), CORS headers exactly when cors, closed."""
    st, hdrs, body, got = resp
    assert st == status, "expected %d %s, got %d: %r" % (status, code, st, got[:300])
    assert hdrs.get("content-type") == "application/json", hdrs
    assert int(hdrs["content-length"]) == len(body), (hdrs, body)
    assert hdrs.get("connection", "").lower() == "close", hdrs
    assert hdrs.get("cache-control") == "no-store", hdrs
    if rid is None:
        assert UUID_RE.match(hdrs.get("x-request-id", "")), hdrs
    else:
        assert hdrs.get("x-request-id") == rid, (rid, hdrs)
    for k, v in CORS.items():
        assert hdrs.get(k) == (v if cors else None), (k, cors, hdrs)
    j = json.loads(body.decode("utf-8"))
    if oip:  # the Open Inference Protocol's {"error": "message"} under /v2
        assert isinstance(j.get("error"), str) and j["error"], j
        return j
    err = j["error"]
    assert err["code"] == code and err["message"], err
    assert err["request_id"] == hdrs["x-request-id"], (err, hdrs)
    return err


def health(d):
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    c.request("GET", "/health")
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200, r.status


def test_heads(d):
    """Every kind of head libmicrohttpd would answer in HTML."""
    h = b"Host: x\r\n"
    cases = [
        # request line or head over the limits (414, 431)
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + h + b"\r\n", 414, "uri_too_long"),
        (b"GET /" + b"a" * 9000, 414, "uri_too_long"),  # a line that never ends
        (b"GET /health HTTP/1.1\r\n" + h + b"X-Pad: " + b"a" * 40000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431,
         "headers_too_large"),
        (b"GET /health HTTP/1.1\r\nCookie: " + b"; ".join(b"c%d=1" % i for i in range(200)) + b"\r\n\r\n",
         431, "headers_too_large"),
        (b"GET /health?" + b"&".join(b"a%d" % i for i in range(200)) + b" HTTP/1.1\r\n" + h + b"\r\n", 431,
         "headers_too_large"),
        # malformed request lines (400)
        (b"GET/health HTTP/1.1\r\n" + h + b"\r\n", 400, "malformed_request"),
        (b"GET /health\r\n" + h + b"\r\n", 400, "malformed_request"),
        (b"GET  /health HTTP/1.1\r\n" + h + b"\r\n", 400, "malformed_request"),
        (b"G\x00T /health HTTP/1.1\r\n" + h + b"\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1 x\r\n" + h + b"\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\n" + h + b"\r\n", 400, "malformed_request"),  # bare LF
        # malformed header lines (400)
        (b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\nBad Name: v\r\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\n" + h + b" folded\r\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\n: v\r\n\r\n", 400, "malformed_request"),
        (b"POST /decode HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", 400, "malformed_request"),
        (b"POST /decode HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400,
         "malformed_request"),
        (b"POST /decode HTTP/1.1\r\nContent-Length: " + b"9" * 25 + b"\r\n\r\n", 413, "body_too_large"),
        # versions (505)
        (b"GET /health HTTP/2.0\r\n" + h + b"\r\n", 505, "http_version_not_supported"),
        (b"GET /health HTTP/1.2\r\n" + h + b"\r\n", 505, "http_version_not_supported"),
        (b"GET /health HTTP/0.9\r\n" + h + b"\r\n", 505, "http_version_not_supported"),
        # chunked bodies, a bad chunk size among them (411)
        (b"POST /decode HTTP/1.1\r\n" + h + b"Content-Type: application/json\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 411, "length_required"),
        (b"POST /decode HTTP/1.1\r\n" + h + b"Content-Type: application/json\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n", 411, "length_required"),
    ]
    for data, status, code in cases:
        expect(raw(d, data), status, code)
        health(d)
    # the same head, sent one piece at a time, is judged the same
    expect(raw(d, [b"GET /health HT", b"TP/2.0\r\n", b"Host: x\r\n\r\n"], pause=0.05), 505,
           "http_version_not_supported")
    # under /v2, the Open Inference Protocol's error shape
    expect(raw(d, b"GET /v2/health/live HTTP/2.0\r\n" + h + b"\r\n"), 505, None, oip=True)
    # a 4 MiB chunked upload gets its 411, not a reset, while it is still sending
    big = b"POST /decode HTTP/1.1\r\n" + h + b"Content-Type: application/json\r\n" \
          b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"[" * (4 << 20)
    expect(raw(d, big), 411, "length_required")
    return len(cases) + 3


def test_ids_and_cors(d):
    """The caller's sane X-Request-Id comes back, and an allowed Origin gets
    the CORS headers, whenever the head is readable that far; an insane id,
    an unreadable head or another origin get a fresh id, no CORS."""
    rid = "trace-1.a:b_C"
    SENT_IDS.add(rid)
    o, x = b"Origin: " + ORIGIN.encode() + b"\r\n", b"X-Request-Id: " + rid.encode() + b"\r\n"
    h = b"Host: x\r\n" + o + x
    post = b"POST /decode HTTP/1.1\r\n" + h + b"Content-Type: application/json\r\n"
    # readable heads: echoed, CORS (a browser's long URL, big cookies, streamed body)
    readable = [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + h + b"\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\n" + h + b"Cookie: c=" + b"a" * 40000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"GET /health HTTP/1.1\r\n" + h + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
         431, "headers_too_large"),
        (post + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n", 411, "length_required"),
        (post + b"Content-Length: " + b"9" * 25 + b"\r\n\r\n", 413, "body_too_large"),
        (post + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, "malformed_request"),
        (b"GET /health HTTP/2.0\r\n" + h + b"\r\n", 505, "http_version_not_supported"),
    ]
    for data, status, code in readable:
        expect(raw(d, data), status, code, rid=rid, cors=True)
    expect(raw(d, b"GET /v2/health/live HTTP/2.0\r\n" + h + b"\r\n"), 505, None, oip=True, rid=rid,
           cors=True)
    # the same with an origin that is not allowed: the id, no CORS
    evil = b"GET /health HTTP/2.0\r\nOrigin: https://evil.example\r\n" + x + b"\r\n"
    expect(raw(d, evil), 505, "http_version_not_supported", rid=rid)
    # insane ids are replaced (as http.c does), CORS stays
    for bad in (b"bad id<x>", b"k" * 129, b""):
        data = b"GET /health HTTP/2.0\r\n" + o + b"X-Request-Id: " + bad + b"\r\n\r\n"
        expect(raw(d, data), 505, "http_version_not_supported", cors=True)
    # unreadable heads: fresh id, no CORS
    broken = [
        (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n" + h + b"\r\n", 414, "uri_too_long"),  # fills the peek
        (b"GET /health HTTP/1.1\n" + h + b"\r\n", 400, "malformed_request"),  # bare LF
        (b"GET /health HTTP/1.1\r\n" + h + b"Host\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\n" + h + b"Bad Name: v\r\n\r\n", 400, "malformed_request"),
        (b"GET /health HTTP/1.1\r\n" + h + b" folded\r\n\r\n", 400, "malformed_request"),
        (b"GET  /health HTTP/1.1\r\n" + h + b"\r\n", 400, "malformed_request"),
    ]
    for data, status, code in broken:
        expect(raw(d, data), status, code)
    # a head that passes: http.c's answer, the same headers
    st, hdrs, _, got = raw(d, b"GET /health HTTP/1.1\r\n" + h + b"\r\n")
    assert st == 200 and hdrs.get("x-request-id") == rid, got[:300]
    assert all(hdrs.get(k) == v for k, v in CORS.items()), hdrs
    health(d)


def test_limits_pass(d):
    """Heads at the gate's limits reach nesfd's handler (libmicrohttpd
    takes what the gate passes)."""
    line = b"GET /health?" + b"&".join(b"a%d" % i for i in range(40)) + b" HTTP/1.1\r\n"
    fields = [b"Host: x\r\n", b"Cookie: " + b"; ".join(b"c%d=1" % i for i in range(40)) + b"\r\n"]
    fields += [b"X-%d: 1\r\n" % i for i in range(128 - 2 - 40 - 39 - 1)]
    pad = 32768 - len(line) - sum(map(len, fields)) - len(b"X-Pad: \r\n\r\n")
    data = line + b"".join(fields) + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
    assert len(data) == 32768, len(data)
    st, hdrs, body, got = raw(d, data)
    assert st == 200 and json.loads(body)["status"] == "ok", got[:300]
    long_line = b"GET /" + b"a" * (8192 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1\r\n\r\n"
    expect(raw(d, long_line), 414, "uri_too_long")  # nesfd's own 414 (paths over 1023 bytes)
    # leading empty lines are allowed (RFC 9112 2.2)
    st, _, _, got = raw(d, b"\r\n\r\nGET /health HTTP/1.0\r\n\r\n")
    assert st == 200, got


def test_header_timeout(d):
    """A head that never completes: 408 after the header timeout (1 s),
    with the id and origin of the lines that came."""
    t0 = time.time()
    SENT_IDS.add("slow-1")
    err = expect(raw(d, b"GET /health HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode() +
                     b"\r\nX-Request-Id: slow-1\r\n", wait=5), 408, "request_timeout", rid="slow-1",
                 cors=True)
    dt = time.time() - t0
    assert 0.9 < dt < 2.0, dt
    assert "header" in err["message"], err
    t0 = time.time()
    expect(raw(d, b"", wait=5), 408, "request_timeout")  # nothing at all
    assert time.time() - t0 < 2.0
    health(d)


def test_keep_alive_clients(d):
    """A client that reuses its connection gets right answers: every
    answer says Connection: close and http.client reconnects."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    z = [[0.1 * ((i * 7 + j) % 11 - 5) for j in range(192)] for i in range(2)]
    body = json.dumps({"latents": z, "options": FAST})
    for i in range(10):
        c.request("GET", "/health")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        assert r.getheader("Connection") == "close"
        c.request("POST", "/decode", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        j = json.loads(r.read())
        assert r.status == 200 and len(j["structures"]) == 2, j
        assert j["structures"][0]["num_atoms"] == 2, j["structures"][0]
    c.close()
    # a second request on the same connection is never read: it would not
    # pass the gate
    st, _, body, got = raw(d, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /no HTTP/2.0\r\nHost: x\r\n\r\n")
    assert st == 200 and got.count(b"HTTP/1.1 ") == 1, got


def test_connection_limit(d):
    """Over max_connections_per_client a 503 with Retry-After in JSON,
    while another client is served; the slot comes back on close."""
    held = []
    for _ in range(PER_CLIENT):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", d.port))
        held.append(s)
    time.sleep(0.2)
    st, hdrs, _, _ = resp = raw(d, b"GET /health HTTP/1.1\r\n\r\n", src="127.0.0.2")
    expect(resp, 503, "too_many_connections")
    assert hdrs.get("retry-after") == "1", hdrs
    # the head, when it came before the accept, names the id and origin:
    # each answer has both or neither (a fresh id, no CORS)
    SENT_IDS.add("over-1")
    head = b"GET /health HTTP/1.1\r\nOrigin: " + ORIGIN.encode() + b"\r\nX-Request-Id: over-1\r\n\r\n"
    named = 0
    for _ in range(20):
        resp = raw(d, head, src="127.0.0.2")
        seen = resp[1].get("x-request-id") == "over-1"
        expect(resp, 503, "too_many_connections", rid="over-1" if seen else None, cors=seen)
        named += seen
    print("  503 at accept: %d of 20 racing heads named the caller's id" % named)
    for _ in range(3):  # queued before the accept: always named
        expect(raw(d, head, src="127.0.0.2", before_accept=True), 503, "too_many_connections",
               rid="over-1", cors=True)
    health(d)
    for s in held:
        s.close()
    time.sleep(0.3)
    st, _, _, got = raw(d, b"GET /health HTTP/1.1\r\n\r\n", src="127.0.0.2")
    assert st == 200, got


def main():
    tmp = tempfile.mkdtemp(prefix="nesfd-gate-")
    fixture = os.path.join(tmp, "fixture.safetensors")
    subprocess.run([MKMODEL, fixture, os.path.join(SHARED, "datasets", "lcs6", "meta.json"), "7"],
                   check=True)
    d = Daemon("--model", "fx=" + fixture, "--compute-threads", "1", "--header-timeout", "1",
               "--max-connections-per-client", str(PER_CLIENT), "--cors-origin", ORIGIN)
    failed = 0
    try:
        health(d)
        time.sleep(0.3)
        fds0 = d.fds()
        for t in (test_heads, test_ids_and_cors, test_limits_pass, test_header_timeout, test_keep_alive_clients,
                  test_connection_limit):
            t0 = time.time()
            try:
                t(d)
                print("PASS %-24s %6.2f s" % (t.__name__, time.time() - t0))
            except Exception as e:
                failed += 1
                print("FAIL %-24s %s: %s" % (t.__name__, type(e).__name__, e))
        # the gate's answers are logged and counted like any other
        gate_logs = [json.loads(l) for l in d.lines if '"gate":true' in l]
        assert len(gate_logs) >= 30, len(gate_logs)
        assert all(UUID_RE.match(j["id"]) or j["id"] in SENT_IDS for j in gate_logs), gate_logs
        assert any(j["id"] in SENT_IDS for j in gate_logs)
        time.sleep(2.5)  # lingering answered connections are closed by now
        fds1 = d.fds()
        print("  descriptors: %d before, %d after; %d gate answers logged" % (fds0, fds1, len(gate_logs)))
        if fds1 != fds0:
            failed += 1
            print("FAIL descriptors leaked: %d -> %d" % (fds0, fds1))
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(30)
        if rc != 0:
            failed += 1
            print("FAIL exit code %d" % rc)
    except Exception as e:
        failed += 1
        print("FAIL %s: %s" % (type(e).__name__, e))
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
        if failed:
            print("---- daemon log (last 30 lines)\n" + "".join(d.lines[-30:]))
        subprocess.run(["rm", "-rf", tmp])
    print("%s" % ("FAILED" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
