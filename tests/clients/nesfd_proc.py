"""Starts a real nesfd on a free loopback port for the client tests.

    with Nesfd() as d:           # env NESFD (binary), NESF_TEST_MODEL (weights)
        d.url                    # http://127.0.0.1:PORT

The model is NESF_TEST_MODEL or else the default trained weights,
models/lcs6.safetensors: the clients are tested on structures that really
decode (a random network predicts degenerate cells).  Tests decode with
TEST_OPTIONS (a coarse particle grid: quality does not matter, only that
client and API agree) and one BLAS thread per daemon: the suite runs two
tests at a time on 2 cores, and OpenBLAS threads competing for busy cores
made decoding 5x slower."""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.environ.get("NESF_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(ROOT, "models", "lcs6.safetensors")
TEST_OPTIONS = {"grid_step": 1.5, "iterations": 16}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nesfd:
    def __init__(self, extra=(), model=None, name="test", token=None):
        self.exe = os.environ.get("NESFD") or os.path.join(ROOT, "build", "server", "nesfd")
        if not os.access(self.exe, os.X_OK):
            raise RuntimeError("nesfd not built: %s (set NESFD)" % self.exe)
        self.model = model or os.environ.get("NESF_TEST_MODEL") or DEFAULT_MODEL
        if not os.path.exists(self.model):
            raise RuntimeError("no model: %s (set NESF_TEST_MODEL)" % self.model)
        self.token = token
        self.name = name
        self.extra = list(extra)
        self.proc = None
        self.log = None

    def start(self, timeout=120):
        for attempt in range(3):  # the port may be taken between probe and bind
            self.port = free_port()
            self.url = "http://127.0.0.1:%d" % self.port
            self.log = tempfile.NamedTemporaryFile(prefix="nesfd-", suffix=".log", delete=False)
            args = [self.exe, "--listen", "127.0.0.1:%d" % self.port, "--model", "%s=%s" % (self.name, self.model),
                    "--web-root", os.path.join(ROOT, "clients", "web"), "--backend", "cpu",
                    "--compute-threads", "1"] + self.extra
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    req = urllib.request.Request(self.url + "/ready")
                    if self.token:
                        req.add_header("Authorization", "Bearer " + self.token)
                    with urllib.request.urlopen(req, timeout=2) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    time.sleep(0.2)
            self.stop()
            if attempt == 2 or time.time() >= deadline:
                raise RuntimeError("nesfd did not become ready:\n" + self.output())
        return self

    def output(self):
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()[-4000:]
        except (OSError, AttributeError):
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.log:
            os.unlink(self.log.name)

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())
