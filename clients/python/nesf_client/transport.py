"""HTTP transport of nesf_client: one JSON call to nesfd, its errors made
readable (unreachable server, error answers with code and request id, a
missing token).  Standard library only."""
import json
import socket
import sys
import urllib.error
import urllib.request

VERSION = "0.1.0"
DEFAULT_URL = "http://127.0.0.1:8080"

EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class ClientError(Exception):
    """A failed call or bad input; code is the CLI's exit status
    (EXIT_SERVER: the server answered an error, EXIT_USAGE: bad input,
    EXIT_UNREACHABLE: no answer)."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- HTTP

class Api:
    """One nesfd base URL; call() sends JSON and returns the parsed answer or
    raises ClientError."""

    def __init__(self, url, token=None, timeout=300.0, verbose=False):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.verbose = verbose

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", "nesf-client/" + VERSION)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                raw, rid = res.read(), res.headers.get("X-Request-Id", "")
        except urllib.error.HTTPError as e:
            raise self._http_error(path, e) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                why = "connection refused"
            elif isinstance(reason, socket.gaierror):
                why = "unknown host"
            else:
                why = str(reason)
            raise ClientError(
                "cannot reach nesfd at %s (%s).\n"
                "Is the daemon running?  Start it with `nesfd --listen 127.0.0.1:8080` or point "
                "--url / NESF_URL at a running one." % (self.url, why), EXIT_UNREACHABLE) from None
        except (socket.timeout, TimeoutError):
            raise ClientError("nesfd at %s did not answer %s within %g s (raise --timeout)"
                              % (self.url, path, self.timeout), EXIT_UNREACHABLE) from None
        except (ConnectionError, OSError) as e:
            raise ClientError("connection to nesfd at %s failed: %s" % (self.url, e),
                              EXIT_UNREACHABLE) from None
        if self.verbose and rid:
            print("nesf-client: %s %s -> request id %s" % (method, path, rid), file=sys.stderr)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise ClientError("%s: the answer is not JSON (is %s really nesfd?)" % (path, self.url),
                              EXIT_SERVER) from None

    def _http_error(self, path, e):
        raw = e.read()
        rid = e.headers.get("X-Request-Id", "") if e.headers else ""
        msg = None
        try:
            err = json.loads(raw.decode("utf-8")).get("error", {})
            code = err.get("code", "")
            msg = "%s%s" % (code + ": " if code else "", err.get("message", ""))
            rid = err.get("request_id", rid)
        except (ValueError, AttributeError):
            msg = raw.decode("utf-8", "replace").strip()[:300] or e.reason
        text = "nesfd answered %s %s to %s: %s" % (e.code, e.reason, path, msg)
        if rid:
            text += " (request id %s)" % rid
        if e.code == 401:
            text += "\nThe server wants a bearer token: pass --token or set NESF_TOKEN."
        return ClientError(text, EXIT_SERVER)


