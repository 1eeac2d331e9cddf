#!/usr/bin/python3
"""nesfd's Open Inference Protocol (KServe v2 REST) routes over real HTTP.

    test_oip.py NESFD MKMODEL

Every answer is validated against JSON Schemas transcribed from the
protocol's REST specification (kserve/open-inference-protocol,
specification/protocol/inference_rest.md: $metadata_server_response,
$metadata_model_response with $metadata_tensor, $ready_model_response,
$live_server_response, $inference_response with $response_output, and the
error objects {"error": $string}); requests are written the way the
specification's own example is.  Checked beyond the shapes: tensor data
agrees with each shape, decode/encode answers equal those of /decode and
/encode for the same inputs, protocol and native requests share batches,
every kind of bad request gets a 4xx with the protocol's error object, auth
applies to the model routes and not to the health probes.  Uses
test_nesfd.py's daemon wrapper and the MKMODEL fixture (known structures)."""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_nesfd as base  # noqa: E402  (reads NESFD, MKMODEL from argv too)
from test_nesfd import FAST, LATENT, TOKEN, Daemon, close, latents  # noqa: E402

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
SHAPE = {"type": "array", "items": {"type": "integer"}}
PARAMETERS = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
METADATA_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"],
                   "properties": {"name": {"type": "string"}, "datatype": {"enum": DATATYPES}, "shape": SHAPE}}
SCHEMAS = {
    "server_metadata": {"type": "object", "required": ["name", "version", "extensions"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "extensions": {"type": "array", "items": {"type": "string"}}}},
    "model_metadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                       "properties": {"name": {"type": "string"},
                                      "versions": {"type": "array", "items": {"type": "string"}},
                                      "platform": {"type": "string"},
                                      "inputs": {"type": "array", "items": METADATA_TENSOR},
                                      "outputs": {"type": "array", "items": METADATA_TENSOR}}},
    "model_ready": {"type": "object", "required": ["name", "ready"],
                    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "server_live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "server_ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "inference_response": {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                       "id": {"type": "string"}, "parameters": PARAMETERS,
                       "outputs": {"type": "array", "items": {
                           "type": "object", "required": ["name", "shape", "datatype", "data"],
                           "properties": {"name": {"type": "string"}, "shape": SHAPE,
                                          "datatype": {"enum": DATATYPES}, "parameters": PARAMETERS,
                                          "data": {"type": "array"}}}}}},
    "error": {"type": "object", "required": ["error"], "additionalProperties": False,
              "properties": {"error": {"type": "string", "minLength": 1}}},
}
for s in SCHEMAS.values():
    jsonschema.Draft7Validator.check_schema(s)


def valid(kind, body):
    jsonschema.validate(body, SCHEMAS[kind])
    return body


def expect_oip_error(resp, status):
    st, _, body = resp
    assert st == status, "expected %d, got %d %s" % (status, st, body)
    return valid("error", body)["error"]


def tensor_data_ok(out):
    """The flat data has as many elements as the shape says, of its datatype."""
    n = 1
    for d in out["shape"]:
        n *= d
    assert len(out["data"]) == n, (out["name"], out["shape"], len(out["data"]))
    py = {"FP32": (int, float), "BOOL": (bool,), "BYTES": (str,)}[out["datatype"]]
    assert all(isinstance(x, py) for x in out["data"]), out["name"]


def infer(d, body, model="fx", **kw):
    st, h, ans = d.call("POST", "/v2/models/%s/infer" % model, body, **kw)
    assert st == 200, (st, ans)
    valid("inference_response", ans)
    for out in ans["outputs"]:
        tensor_data_ok(out)
    return {o["name"]: o for o in ans["outputs"]}, ans


def latent_input(z, nested=False):
    flat = [x for v in z for x in v]
    return {"name": "latent", "shape": [len(z), LATENT], "datatype": "FP32", "data": z if nested else flat}


# ---------------------------------------------------------------- tests

def test_server_routes(d, _):
    st, _, body = d.call("GET", "/v2")
    assert st == 200 and valid("server_metadata", body)["name"] == "nesfd", body
    st, _, body = d.call("GET", "/v2/health/live", auth=False)
    assert st == 200 and valid("server_live", body)["live"] is True
    st, _, body = d.call("GET", "/v2/health/ready", auth=False)
    assert st == 200 and valid("server_ready", body)["ready"] is True
    # the probes are public; everything else wants the token, in the protocol's error shape
    expect_oip_error(d.call("GET", "/v2", auth=False), 401)
    expect_oip_error(d.call("GET", "/v2/models/fx", auth=False), 401)
    expect_oip_error(d.call("POST", "/v2/models/fx/infer", {"inputs": []}, auth=False), 401)
    assert "no route" in expect_oip_error(d.call("GET", "/v2/nothing"), 404)


def test_model_routes(d, _):
    st, _, md = d.call("GET", "/v2/models/fx")
    valid("model_metadata", md)
    assert st == 200 and md["name"] == "fx" and "versions" not in md
    ins = {t["name"]: t for t in md["inputs"]}
    outs = {t["name"]: t for t in md["outputs"]}
    assert ins["latent"] == {"name": "latent", "datatype": "FP32", "shape": [-1, LATENT]}, ins
    assert ins["structure"]["datatype"] == "BYTES" and ins["structure"]["shape"] == [-1]
    assert outs["lattice"]["shape"] == [-1, 6] and outs["structure"]["datatype"] == "BYTES"
    assert outs["latent"]["shape"] == [-1, LATENT] and outs["decoded"]["datatype"] == "BOOL"
    st, _, body = d.call("GET", "/v2/models/rnd/ready")
    assert st == 200 and valid("model_ready", body) == {"name": "rnd", "ready": True}
    st, h, _ = d.call("HEAD", "/v2/models/fx/ready")
    assert st == 200, st
    assert "'nope'" in expect_oip_error(d.call("GET", "/v2/models/nope"), 404)
    expect_oip_error(d.call("POST", "/v2/models/nope/infer", {"inputs": []}), 404)
    assert "version" in expect_oip_error(d.call("GET", "/v2/models/fx/versions/1"), 404)
    expect_oip_error(d.call("GET", "/v2/models/fx/other"), 404)
    st, h, body = d.call("GET", "/v2/models/fx/infer")
    assert st == 405 and h["allow"].startswith("POST"), (st, h)
    valid("error", body)
    st, h, body = d.call("POST", "/v2/models/fx", {})
    assert st == 405 and "GET" in h["allow"], (st, h)
    valid("error", body)


def test_infer_decode(d, ctx):
    z = latents(3, 21)
    # the specification's example request shape: id, inputs, outputs by name
    outs, ans = infer(d, {"id": "42", "inputs": [latent_input(z)], "parameters": FAST,
                          "outputs": [{"name": "structure"}, {"name": "lattice"}, {"name": "decoded"}]})
    assert ans["id"] == "42" and ans["model_name"] == "fx", ans
    assert outs["structure"]["shape"] == [3] and outs["lattice"]["shape"] == [3, 6]
    assert outs["lattice"]["datatype"] == "FP32" and outs["decoded"]["data"] == [True] * 3
    st, _, native = d.call("POST", "/decode", {"latents": z, "options": FAST})
    assert st == 200, native
    for i, s in enumerate(native["structures"]):
        got = json.loads(outs["structure"]["data"][i])
        assert got["species"] == s["species"] and got["formula"] == s["formula"], (got, s)
        assert all(close(a, b, 1e-9) for a, b in zip(got["cart_coords"], s["cart_coords"]))
        cell = outs["lattice"]["data"][6 * i:6 * i + 6]
        want = [s["lattice"][k] for k in ("a", "b", "c", "alpha", "beta", "gamma")]
        assert close(cell, want, 1e-4), (cell, want)
        assert 3.5 < cell[0] < 4.5 and 80 < cell[5] < 100, cell
    ctx["oip_structures"] = [outs["structure"]["data"][0]]
    # nested data (row-major) gives the same; no "outputs" gives all three; no id -> the request id
    outs2, ans2 = infer(d, {"inputs": [latent_input(z, nested=True)], "parameters": FAST})
    assert set(outs2) == {"structure", "lattice", "decoded"} and outs2["lattice"] == outs["lattice"]
    assert ans2["id"] and ans2["id"] != "42"
    # a subset of the outputs
    outs3, _ = infer(d, {"inputs": [latent_input(z[:1])], "parameters": dict(FAST, binary_data_output=False),
                         "outputs": [{"name": "lattice", "parameters": {"binary_data": False}}]})
    assert list(outs3) == ["lattice"] and outs3["lattice"]["data"] == outs["lattice"]["data"][:6]


def test_infer_decode_failure_in_place(d, _):
    """A latent that does not decode (the random model's degenerate cells)
    is reported in place, as the native routes do: decoded = false."""
    outs, _ = infer(d, {"inputs": [latent_input(latents(2, 5))], "parameters": FAST}, model="rnd")
    st, _, native = d.call("POST", "/decode", {"model": "rnd", "latents": latents(2, 5), "options": FAST})
    assert st == 200 and any("error" in s for s in native["structures"]), "nothing failed to decode"
    for i, s in enumerate(native["structures"]):
        ok = "error" not in s
        assert outs["decoded"]["data"][i] is ok, (outs["decoded"], s)
        if not ok:
            assert "error" in json.loads(outs["structure"]["data"][i])
            assert outs["lattice"]["data"][6 * i:6 * i + 6] == [0.0] * 6


def test_infer_encode(d, ctx):
    st, _, dec = d.call("POST", "/decode", {"latents": latents(2, 31), "options": FAST, "format": ["json", "cif"]})
    assert st == 200, dec
    cif = dec["structures"][0]["cif"]
    js = json.dumps({k: dec["structures"][1][k] for k in ("lattice", "species", "frac_coords")})
    outs, ans = infer(d, {"inputs": [{"name": "structure", "shape": [3], "datatype": "BYTES",
                                      "data": [cif, js, ctx["oip_structures"][0]]}]})
    lat = outs["latent"]
    assert list(outs) == ["latent"] and lat["shape"] == [3, LATENT] and lat["datatype"] == "FP32"
    st, _, native = d.call("POST", "/encode", {"structures": [cif, js, ctx["oip_structures"][0]]})
    assert st == 200, native
    for i in range(3):
        assert close(lat["data"][LATENT * i:LATENT * (i + 1)], native["latents"][i], 1e-6), i
    # parameters.refine as /encode's "refine" (refined by default)
    outs, _ = infer(d, {"inputs": [{"name": "structure", "shape": [1], "datatype": "BYTES", "data": [cif]}],
                        "parameters": {"refine": False}})
    st, _, plain = d.call("POST", "/encode", {"structures": [cif], "refine": False})
    assert st == 200 and close(outs["latent"]["data"], plain["latents"][0], 1e-6)
    assert not close(outs["latent"]["data"], lat["data"][:LATENT], 1e-6)
    # [N, 1] is accepted as well
    outs, _ = infer(d, {"inputs": [{"name": "structure", "shape": [1, 1], "datatype": "BYTES", "data": [[cif]]}]})
    assert outs["latent"]["data"] == lat["data"][:LATENT]


def test_infer_errors(d, _):
    z1 = latents(1, 3)
    good = latent_input(z1)

    def bad(body, want=None, status=400, model="fx"):
        msg = expect_oip_error(d.call("POST", "/v2/models/%s/infer" % model, body), status)
        assert want is None or want in msg, (want, msg)
    assert "JSON" in expect_oip_error(d.call("POST", "/v2/models/fx/infer", raw=b"{nope"), 400)
    bad([], "object")
    bad({"inputs": [good], "extra": 1}, "unknown key 'extra'")
    bad({"inputs": []}, "one named tensor")
    bad({"inputs": [good, good]}, "one named tensor")
    bad({"inputs": [dict(good, name="image")]}, "no input 'image'")
    bad({"inputs": [dict(good, datatype="FP64")]}, "datatype FP32")
    bad({"inputs": [dict(good, shape=[1, 7], data=[0.0] * 7)]}, "[N, %d]" % LATENT)
    bad({"inputs": [dict(good, shape=[2, LATENT])]}, "elements")
    bad({"inputs": [dict(good, data=["x"] * LATENT)]}, "finite")
    bad({"inputs": [dict(good, data=[1e39] * LATENT)]}, "finite")
    bad({"inputs": [{k: v for k, v in good.items() if k != "data"}]}, "binary")
    bad({"inputs": [dict(good, bogus=1)]}, "unknown key 'bogus'")
    bad({"inputs": [dict(good, shape=[0, LATENT], data=[])]}, "empty")
    bad({"inputs": [latent_input(latents(65, 1))]}, "at most")
    bad({"inputs": [good], "id": 7}, "'id'")
    bad({"inputs": [good], "outputs": [{"name": "latent"}]}, "no output 'latent'")
    bad({"inputs": [good], "outputs": []}, "non-empty")
    bad({"inputs": [good], "outputs": [{"name": "lattice", "parameters": {"binary_data": True}}]}, "binary")
    bad({"inputs": [good], "parameters": {"no_such_option": 1}}, "no_such_option")
    bad({"inputs": [good], "parameters": {"symprec": 5}}, "symprec")
    bad({"inputs": [good], "parameters": {"binary_data_output": True}}, "binary")
    bad({"inputs": [good], "parameters": {"iterations": -3}}, "iterations")
    s = {"name": "structure", "shape": [1], "datatype": "BYTES"}
    bad({"inputs": [dict(s, data=["garbage"])]}, "inputs[0].data[0]")
    bad({"inputs": [dict(s, data=[5])]}, "text")
    bad({"inputs": [dict(s, datatype="FP32", data=["x"])]}, "BYTES")
    bad({"inputs": [dict(s, shape=[1, 2], data=["a", "b"])]}, "[N, 1]")
    bad({"inputs": [good]}, "no model", status=404, model="nope")
    # still serving after all of that
    infer(d, {"inputs": [good], "parameters": FAST})


def test_batching_with_native(d, _):
    """Protocol and native requests go through the same batcher: sent
    together, they share backend calls."""
    z = latents(12, 41)

    def oip(i):
        _, ans = infer(d, {"inputs": [latent_input([z[i]])], "parameters": FAST})
        return ans["parameters"]["batch"]

    def native(i):
        st, _, ans = d.call("POST", "/decode", {"latents": [z[i]], "options": FAST})
        assert st == 200, ans
        return ans["batch"]
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        futs = [ex.submit(oip if i % 2 else native, i) for i in range(12)]
        batches = [f.result() for f in futs]
    assert max(batches) > 1, batches
    assert d.metric("nesfd_requests_total", route="/v2/models/", status="200") > 0


def test_queue_full_deadline_draining(_, ctx):
    """A second daemon (one item per call, queue of 4, 1.5 s deadline): a
    full queue and a missed deadline in the protocol's shape; SIGTERM with an
    infer request in flight still answers it (in the protocol's shape) and
    exits 0."""
    b = Daemon("--model", "fx=" + ctx["fx"], "--compute-threads", "1", "--max-batch", "1",
               "--max-delay-us", "0", "--queue-limit", "4", "--request-timeout", "1.5")
    # 1-4 s a latent here: past the 1.5 s deadline
    slow = {"inputs": [latent_input(latents(4, 1))], "parameters": {"mode": "paper", "iterations": 256}}
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        t0 = time.time()
        first = ex.submit(b.call, "POST", "/v2/models/fx/infer", slow, None, False)
        while b.metric("nesfd_queue_depth", model="fx") < 3 and time.time() - t0 < 10:
            time.sleep(0.02)
        st, h, body = b.call("POST", "/v2/models/fx/infer", {"inputs": [latent_input(latents(2, 2))]}, auth=False)
        assert "queued" in expect_oip_error((st, h, body), 503) and h["retry-after"] == "1", (body, h)
        assert "deadline" in expect_oip_error(first.result(), 504)
        assert b.metric("nesfd_rejected_total", model="fx") == 1
        # draining: SIGTERM with a slow request in flight.  The answered
        # requests may still count for a moment after their answers (until
        # libmicrohttpd reports them complete): wait until only the /metrics
        # call itself is in flight, so that 2 below means the slow one.
        while b.metric("nesfd_in_flight_requests") > 1 and time.time() - t0 < 20:
            time.sleep(0.02)
        busy = ex.submit(b.call, "POST", "/v2/models/fx/infer", dict(slow, inputs=[latent_input(latents(1, 3))]),
                         None, False)
        while b.metric("nesfd_in_flight_requests") < 2 and time.time() - t0 < 20:
            time.sleep(0.02)
        b.proc.send_signal(signal.SIGTERM)
        st, _, body = busy.result()
        valid("inference_response" if st == 200 else "error", body)
        assert st in (200, 504), (st, body)
    assert b.proc.wait(60) == 0


def test_documented(d, _):
    """api/openapi.yaml and docs/nesfd.md document every /v2 route."""
    with open(os.path.join(base.SRC, "api", "openapi.yaml")) as f:
        spec = f.read()
    with open(os.path.join(base.SRC, "docs", "nesfd.md")) as f:
        doc = f.read()
    for route in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
                  "/v2/models/{name}/infer"):
        assert "\n  %s:\n" % route in spec, route
        assert "`%s %s`" % ("POST" if route.endswith("infer") else "GET", route) in doc, route


TESTS = [test_server_routes, test_model_routes, test_infer_decode, test_infer_decode_failure_in_place,
         test_infer_encode, test_infer_errors, test_batching_with_native, test_queue_full_deadline_draining,
         test_documented]


def main():
    tmp = tempfile.mkdtemp(prefix="nesfd-oip-")
    fx, rnd = os.path.join(tmp, "fixture.safetensors"), os.path.join(tmp, "random.safetensors")
    meta = os.path.join(base.SHARED, "datasets", "lcs6", "meta.json")
    subprocess.run([base.MKMODEL, fx, meta, "7"], check=True)
    subprocess.run([base.MKMODEL, rnd, meta, "8", "--random"], check=True)
    with open(os.path.join(tmp, "token"), "w") as f:
        f.write(TOKEN + "\n")
    ctx, failed = {"fx": fx}, 0
    try:
        d = Daemon("--model", "fx=" + fx, "--model", "rnd=" + rnd, "--compute-threads", "1",
                   "--http-threads", "4", "--max-batch", "16", "--max-delay-us", "50000",
                   "--token-file", os.path.join(tmp, "token"), "--max-items", "64", "--request-timeout", "120")
        for t in TESTS:
            t0 = time.time()
            try:
                t(d, ctx)
                print("PASS %-36s %6.2f s" % (t.__name__, time.time() - t0))
            except Exception as e:  # report every test, then fail
                failed += 1
                print("FAIL %-36s %s: %s" % (t.__name__, type(e).__name__, e))
        if failed:
            print("---- daemon log (last 30 lines)")
            print("".join(d.lines[-30:]))
    finally:
        for x in base.daemons:
            x.kill()
        subprocess.run(["rm", "-rf", tmp])
    print("%d passed, %d failed" % (len(TESTS) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
