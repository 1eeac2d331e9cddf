"""Starting nesfd for the integration tests (test_nesfd.py, test_oip.py,
test_gate.py): one way to wait for its "listening" log line and learn the
port it bound."""
import json
import subprocess
import threading


def spawn(nesfd, *args, timeout=60):
    """Starts `nesfd --listen 127.0.0.1:0 --backend cpu ARGS` and waits for
    its listening line.  Returns (proc, port, lines): lines keeps filling
    with its stderr (the JSON log) from a reader thread.  Kills the process
    and raises RuntimeError with its log when it does not come up."""
    lines, port = [], []
    proc = subprocess.Popen([nesfd, "--listen", "127.0.0.1:0", "--backend", "cpu", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()

    def reader():
        for line in proc.stderr:
            lines.append(line)
            if '"event":"listening"' in line and not port:
                port.append(json.loads(line)["port"])
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(timeout) or not port:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise RuntimeError("nesfd did not start:\n" + "".join(lines))
    return proc, port[0], lines
