#!/usr/bin/python3
"""Checks deploy/ as far as a machine without a Docker engine allows.

- docker-compose.yml: parsed (python3-yaml) and checked for what nesfd needs
  (GPU reservation, port, models volume, restart policy, health check,
  replicas profile), then validated by `docker-compose config` (Debian's
  docker-compose, the Compose schema) for both profiles;
- nginx.conf: upstreams match the compose services, `nginx -t` passes;
- Dockerfile: multi-stage CUDA devel -> runtime, non-root user, health check
  on /health, build options that exist in meson_options.txt, the library
  packages of scripts/deps.sh all installed in the build stage;
- nesfd.service: `systemd-analyze verify` with no complaint;
- every nesfd flag used in the three files is accepted by the real nesfd
  (`nesfd ... --check-config`).
Not verified here: building the image, pulling the CUDA and nginx images,
running containers, the NVIDIA runtime, and starting the unit under systemd.

Usage: test_deploy.py (env NESFD = the built nesfd; NESF_SOURCE_ROOT)."""
import os
import re
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.environ.get("NESF_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
NESFD = os.environ.get("NESFD", "")
results = []


def check(fn):
    t0 = time.time()
    try:
        fn()
        results.append((fn.__name__, True))
        print("ok   %s (%.1f s)" % (fn.__name__, time.time() - t0))
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append((fn.__name__, False))
        print("FAIL %s: %s: %s" % (fn.__name__, type(e).__name__, e))
    return fn


def need(cond, msg):
    if not cond:
        raise AssertionError(msg)


def tool(name):
    path = shutil.which(name)
    need(path, "%s not installed (scripts/deps.sh test installs it)" % name)
    return path


def compose():
    with open(os.path.join(DEPLOY, "docker-compose.yml")) as f:
        return yaml.safe_load(f)


def expand(s):
    """${VAR:-default} -> default, as compose does with VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", s)


def dockerfile():
    """Instructions as (KEYWORD, argument text), continuation lines joined."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = f.read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kw, _, rest = line.partition(" ")
            out.append((kw.upper(), rest.strip()))
    return out


def nesfd_args_of(args):
    """The argument list after the program, ${VAR:-x} expanded, env refs dropped."""
    return [expand(a) for a in args if not a.startswith("$")]


def seconds(s):
    m = re.fullmatch(r"(\d+)(s|m)?", str(s))
    need(m, "bad duration %r" % s)
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


NESFD_SERVICES = ("nesfd", "nesfd-2")


@check
def compose_services():
    c = compose()
    svc = c.get("services", {})
    need(set(svc) == {"nesfd", "nesfd-2", "lb"}, "services %s" % sorted(svc))
    for name in NESFD_SERVICES:
        s = svc[name]
        b = s.get("build", {})
        need(os.path.normpath(os.path.join(DEPLOY, b.get("context", ""), b.get("dockerfile", "")))
             == os.path.join(DEPLOY, "Dockerfile"), "%s: build does not point at deploy/Dockerfile" % name)
        need(s.get("restart") in ("unless-stopped", "always", "on-failure"), "%s: no restart policy" % name)
        hc = s.get("healthcheck", {})
        need(any("/health" in str(x) for x in hc.get("test", [])), "%s: health check does not hit /health" % name)
        need("start_period" in hc, "%s: health check has no start_period (model loading)" % name)
        vols = s.get("volumes", [])
        need(any(v.get("target") == "/models" and v.get("read_only") for v in vols),
             "%s: no read-only volume on /models" % name)
        devs = s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        need(any("gpu" in d.get("capabilities", []) and d.get("driver") == "nvidia" for d in devs),
             "%s: no GPU reservation" % name)
        cmd = s.get("command", [])
        need("--listen" in cmd and cmd[cmd.index("--listen") + 1].endswith(":8080"), "%s: not listening on :8080" % name)
        need("--model" in cmd and "/models/" in cmd[cmd.index("--model") + 1], "%s: model not from /models" % name)
        need(seconds(s.get("stop_grace_period", "10s")) > 60,
             "%s: stop_grace_period must exceed nesfd's 60 s shutdown grace" % name)
    need(not svc["nesfd"].get("profiles"), "the single nesfd must run without a profile")
    need(any(str(p).endswith(":8080") for p in svc["nesfd"].get("ports", [])), "nesfd: port 8080 not published")
    for name in ("nesfd-2", "lb"):
        need(svc[name].get("profiles") == ["replicas"], "%s: not in profile replicas" % name)
    ids = [svc[n]["deploy"]["resources"]["reservations"]["devices"][0].get("device_ids", ["?"])[0] for n in NESFD_SERVICES]
    need(len({expand(i) for i in ids}) == 2, "replicas reserve the same GPU by default: %s" % ids)


@check
def compose_lb():
    lb = compose()["services"]["lb"]
    vols = lb.get("volumes", [])
    conf = [v for v in vols if v.get("target") == "/etc/nginx/nginx.conf"]
    need(conf, "lb does not mount nginx.conf")
    need(os.path.normpath(os.path.join(DEPLOY, conf[0]["source"])) == os.path.join(DEPLOY, "nginx.conf"),
         "lb mounts %s, not deploy/nginx.conf" % conf[0]["source"])
    dep = lb.get("depends_on", {})
    need(all(dep.get(n, {}).get("condition") == "service_healthy" for n in NESFD_SERVICES),
         "lb must wait for healthy replicas")
    need(any(str(p).endswith(":8080") for p in lb.get("ports", [])), "lb: nginx port not published")


@check
def compose_schema():
    dc = tool("docker-compose")
    for extra in ([], ["--profile", "replicas"]):
        r = subprocess.run([dc, "-f", os.path.join(DEPLOY, "docker-compose.yml")] + extra + ["config", "-q"],
                           capture_output=True, text=True, cwd=DEPLOY,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("NESF", "COMPOSE"))})
        need(r.returncode == 0, "docker-compose config %s: %s" % (" ".join(extra), r.stderr.strip()))


@check
def nginx_upstreams_and_syntax():
    with open(os.path.join(DEPLOY, "nginx.conf")) as f:
        conf = f.read()
    ups = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    need(sorted(h for h, _ in ups) == sorted(NESFD_SERVICES), "upstreams %s != compose replicas" % ups)
    need(all(p == "8080" for _, p in ups), "upstream ports %s" % ups)
    need(re.search(r"client_max_body_size\s+8m;", conf), "client_max_body_size must match nesfd's 8M body limit")
    nginx = tool("nginx")
    with tempfile.TemporaryDirectory() as d:
        # compose's service names do not resolve here
        local = re.sub(r"(server\s+)[\w.-]+(:\d+)", r"\g<1>127.0.0.1\2", conf)
        p = os.path.join(d, "nginx.conf")
        with open(p, "w") as f:
            f.write(local)
        r = subprocess.run([nginx, "-t", "-q", "-p", d, "-c", p, "-e", os.path.join(d, "error.log")],
                           capture_output=True, text=True)
        need(r.returncode == 0, "nginx -t: %s" % (r.stderr.strip() or r.stdout.strip()))


@check
def dockerfile_stages():
    ins = dockerfile()
    froms = [a for k, a in ins if k == "FROM"]
    need(len(froms) >= 2, "not multi-stage")
    args = {m.group(1): m.group(2) for k, a in ins if k == "ARG" for m in [re.match(r"(\w+)=(\S+)", a)] if m}

    def sub(s):  # ARG defaults may refer to earlier ARGs
        for _ in range(4):
            s = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)
        return s
    need(froms[0].startswith("${BUILD_IMAGE}") and froms[-1].startswith("${RUNTIME_IMAGE}"),
         "the base images are not build arguments (tests/deploy/image.sh builds on a Debian base)")
    need(re.match(r"nvidia/cuda:[\w.-]+-devel-", sub(froms[0])), "build stage is not a CUDA devel image: %s" % froms[0])
    need(re.match(r"nvidia/cuda:[\w.-]+-runtime-", sub(froms[-1])), "final stage is not a CUDA runtime image: %s" % froms[-1])
    build_alias = froms[0].split()[-1]
    last = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    final = ins[last:]
    need(any(k == "COPY" and a.startswith("--from=" + build_alias) for k, a in final), "nothing copied from the build stage")
    users = [a for k, a in final if k == "USER"]
    need(users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as root")
    hc = [a for k, a in final if k == "HEALTHCHECK"]
    need(hc and "/health" in hc[0] and "CMD" in hc[0], "no HEALTHCHECK on /health")
    expose = [a for k, a in final if k == "EXPOSE"]
    need(expose == ["8080"], "EXPOSE %s" % expose)
    need(any(k == "COPY" and "models/" in a for k, a in final), "models are not baked in")
    prefix = re.search(r"--prefix=(\S+)", " ".join(a for k, a in ins if k == "RUN")).group(1)
    cmd = [a for k, a in final if k == "CMD"][-1]
    need(prefix + "/share/nesf/web" in cmd, "--web-root is not where meson installs clients/web")
    with open(os.path.join(ROOT, "clients", "meson.build")) as f:
        need("install_subdir('web', install_dir: get_option('datadir') / 'nesf')" in f.read(),
             "clients/meson.build no longer installs web/ to <datadir>/nesf")


@check
def dockerfile_build_matches_project():
    ins = dockerfile()
    run = " ".join(a for k, a in ins if k == "RUN")
    with open(os.path.join(ROOT, "meson_options.txt")) as f:
        options = set(re.findall(r"option\('([\w-]+)'", f.read()))
    for opt in re.findall(r"-D([\w-]+)=", run):
        need(opt in options or opt in ("buildtype", "prefix"), "-D%s is not an option of meson_options.txt" % opt)
    with open(os.path.join(ROOT, "scripts", "deps.sh")) as f:
        m = re.search(r"build_pkgs=\(([^)]*)\)", f.read())
    libs = [p for p in m.group(1).split() if p.endswith("-dev")]
    if "-Dtests=false" in run:
        libs = [p for p in libs if p != "libcmocka-dev"]
    for p in libs:
        need(re.search(r"\b%s\b" % re.escape(p), run), "build stage does not install %s (scripts/deps.sh has it)" % p)
    need(os.path.exists(os.path.join(ROOT, ".dockerignore")), "no .dockerignore: build dirs would enter the context")


def nesfd_check(args, what):
    need(NESFD and os.access(NESFD, os.X_OK), "NESFD (the built nesfd) not given")
    r = subprocess.run([NESFD] + args + ["--check-config"], capture_output=True, text=True, timeout=30)
    need(r.returncode == 0, "%s: nesfd %s --check-config: %s" % (what, " ".join(args), (r.stderr or r.stdout).strip()))


@check
def nesfd_accepts_flags():
    ins = dockerfile()
    cmd = [a for k, a in ins if k == "CMD"][-1]
    nesfd_check(json.loads(cmd), "Dockerfile CMD")
    for name in NESFD_SERVICES:
        nesfd_check(nesfd_args_of(compose()["services"][name]["command"]), "compose %s" % name)
    with open(os.path.join(DEPLOY, "nesfd.service")) as f:
        unit = re.sub(r"\\\n", " ", f.read())
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    nesfd_check(nesfd_args_of(shlex.split(exec_start)[1:]), "nesfd.service")


@check
def systemd_unit():
    sa = tool("systemd-analyze")
    need(NESFD and os.access(NESFD, os.X_OK), "NESFD (the built nesfd) not given")
    with open(os.path.join(DEPLOY, "nesfd.service")) as f:
        unit = f.read()
    need(re.search(r"^ExecStart=/usr/local/bin/nesfd ", unit, re.M), "ExecStart is not the installed nesfd")
    for key in ("Restart=", "DynamicUser=yes", "TimeoutStopSec=", "WantedBy=multi-user.target"):
        need(key in unit, "unit lacks %s" % key)
    with tempfile.TemporaryDirectory() as d:
        # verify needs the binary to exist: point it at the one just built
        p = os.path.join(d, "nesfd.service")
        with open(p, "w") as f:
            f.write(unit.replace("/usr/local/bin/nesfd", os.path.abspath(NESFD)))
        r = subprocess.run([sa, "verify", p], capture_output=True, text=True, timeout=60)
        noise = [l for l in (r.stderr + r.stdout).splitlines() if l.strip()]
        need(r.returncode == 0 and not noise, "systemd-analyze verify: %s" % "\n".join(noise))


@check
def nginx_balances_two_replicas():
    """deploy/nginx.conf for real, in front of two nesfd on loopback: both get
    traffic, and requests still succeed with one replica stopped."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "clients"))
    from nesfd_proc import TEST_OPTIONS, Nesfd, free_port
    import urllib.request
    nginx = tool("nginx")
    with open(os.path.join(DEPLOY, "nginx.conf")) as f:
        conf = f.read()
    with tempfile.TemporaryDirectory() as d, Nesfd() as r1, Nesfd() as r2:
        os.chmod(d, 0o755)  # nginx workers run as nobody when we are root
        ports = iter([r1.port, r2.port])
        local = re.sub(r"(server\s+)[\w.-]+:\d+", lambda m: m.group(1) + "127.0.0.1:%d" % next(ports), conf)
        port = free_port()
        local = re.sub(r"listen\s+8080;", "listen 127.0.0.1:%d;" % port, local)
        local = local.replace("/tmp/", d + "/")
        # only the log changes: which replica answered each request
        local = local.replace("access_log /dev/stdout;",
                              "log_format up '$upstream_addr $status';\n    access_log %s/access.log up;" % d)
        p = os.path.join(d, "nginx.conf")
        with open(p, "w") as f:
            f.write(local)
        # master as the current user; daemon off keeps it our child
        proc = subprocess.Popen([nginx, "-p", d, "-c", p, "-e", os.path.join(d, "error.log"), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = "http://127.0.0.1:%d" % port
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/nginx-health", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            size = int(r1.get("/models")["models"][0]["latent_size"])
            body = json.dumps({"latents": [[0.1] * size], "format": ["json"], "options": TEST_OPTIONS}).encode()

            def post():
                req = urllib.request.Request(url + "/decode", data=body, method="POST",
                                             headers={"Content-Type": "application/json", "X-Request-Id": "lb-test"})
                with urllib.request.urlopen(req, timeout=120) as res:
                    need(res.status == 200, "status %d" % res.status)
                    return json.loads(res.read())["structures"]
            first = post()
            for _ in range(5):
                need(post() == first, "replicas answer differently")
            with open(os.path.join(d, "access.log")) as f:
                ups = [l.split()[0] for l in f if l.strip()]
            need({"127.0.0.1:%d" % r1.port, "127.0.0.1:%d" % r2.port} <= set(ups), "one replica got everything: %s" % ups)
            r1.stop()
            for _ in range(2):
                need(post() == first, "failover answer differs")
        finally:
            proc.terminate()
            proc.wait(10)


# ---------------------------------------------------------------- Kubernetes

K8S = os.path.join(DEPLOY, "k8s")


def k8s_docs():
    """Every object of deploy/k8s as `kubectl kustomize` renders it (offline)."""
    kubectl = tool("kubectl")
    r = subprocess.run([kubectl, "kustomize", K8S], capture_output=True, text=True, timeout=60)
    need(r.returncode == 0, "kubectl kustomize deploy/k8s: %s" % r.stderr.strip())
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def obj(props, required=(), extra=False):
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": extra}


# A subset of the Kubernetes API (v1.29 reference) covering every field
# deploy/k8s uses; additionalProperties false catches misspelt and misplaced
# keys, which `kubectl apply` would reject or, worse, silently drop.
STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
QTY = {"type": ["string", "integer"]}
MAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = obj({"name": STR, "labels": MAP, "annotations": MAP, "namespace": STR}, ["name"])
PROBE = obj({"httpGet": obj({"path": STR, "port": QTY, "scheme": STR}, ["port"]), "periodSeconds": INT,
             "timeoutSeconds": INT, "failureThreshold": INT, "initialDelaySeconds": INT, "successThreshold": INT})
CONTAINER = obj({
    "name": STR, "image": STR, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "args": {"type": "array", "items": STR},
    "env": {"type": "array", "items": obj({"name": STR, "value": STR, "valueFrom": obj({"secretKeyRef": obj(
        {"name": STR, "key": STR, "optional": BOOL}, ["key"])})}, ["name"])},
    "ports": {"type": "array", "items": obj({"name": STR, "containerPort": INT, "protocol": {"enum": ["TCP", "UDP"]}},
                                            ["containerPort"])},
    "resources": obj({"requests": {"type": "object", "additionalProperties": QTY},
                      "limits": {"type": "object", "additionalProperties": QTY}}),
    "startupProbe": PROBE, "readinessProbe": PROBE, "livenessProbe": PROBE,
    "lifecycle": obj({"preStop": obj({"exec": obj({"command": {"type": "array", "items": STR}})})}),
    "volumeMounts": {"type": "array", "items": obj({"name": STR, "mountPath": STR, "readOnly": BOOL},
                                                   ["name", "mountPath"])},
}, ["name", "image"])
POD = obj({
    "terminationGracePeriodSeconds": INT,
    "securityContext": obj({"runAsNonRoot": BOOL, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT}),
    "tolerations": {"type": "array", "items": obj({"key": STR, "operator": {"enum": ["Exists", "Equal"]},
                                                   "value": STR, "effect": STR})},
    "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
    "volumes": {"type": "array", "items": obj({"name": STR, "persistentVolumeClaim": obj(
        {"claimName": STR, "readOnly": BOOL}, ["claimName"])}, ["name"])},
}, ["containers"])
SELECTOR = obj({"matchLabels": MAP}, ["matchLabels"])
K8S_SCHEMAS = {
    "Deployment": obj({"apiVersion": {"const": "apps/v1"}, "kind": STR, "metadata": META, "spec": obj({
        "replicas": INT, "selector": SELECTOR,
        "strategy": obj({"type": {"enum": ["RollingUpdate", "Recreate"]},
                         "rollingUpdate": obj({"maxUnavailable": QTY, "maxSurge": QTY})}),
        "template": obj({"metadata": obj({"labels": MAP, "annotations": MAP}), "spec": POD}, ["spec"]),
    }, ["selector", "template"])}, ["apiVersion", "kind", "metadata", "spec"]),
    "Service": obj({"apiVersion": {"const": "v1"}, "kind": STR, "metadata": META, "spec": obj({
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "selector": MAP,
        "ports": {"type": "array", "items": obj({"name": STR, "port": INT, "targetPort": QTY,
                                                  "protocol": {"enum": ["TCP", "UDP"]}}, ["port"])},
    })}, ["apiVersion", "kind", "metadata", "spec"]),
    "HorizontalPodAutoscaler": obj({"apiVersion": {"const": "autoscaling/v2"}, "kind": STR, "metadata": META,
                                    "spec": obj({
        "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": STR}, ["kind", "name"]),
        "minReplicas": INT, "maxReplicas": INT,
        "metrics": {"type": "array", "items": obj({"type": {"enum": ["Pods", "Resource", "Object", "External"]},
                                                    "pods": obj({"metric": obj({"name": STR}, ["name"]),
                                                                 "target": obj({"type": {"const": "AverageValue"},
                                                                                "averageValue": QTY}, ["type"])},
                                                                ["metric", "target"])}, ["type"])},
        "behavior": obj({d: obj({"stabilizationWindowSeconds": INT, "policies": {"type": "array", "items": obj(
            {"type": {"enum": ["Pods", "Percent"]}, "value": INT, "periodSeconds": INT},
            ["type", "value", "periodSeconds"])}}) for d in ("scaleUp", "scaleDown")}),
    }, ["scaleTargetRef", "maxReplicas"])}, ["apiVersion", "kind", "metadata", "spec"]),
    "PersistentVolumeClaim": obj({"apiVersion": {"const": "v1"}, "kind": STR, "metadata": META, "spec": obj({
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                            "ReadWriteOncePod"]}},
        "resources": obj({"requests": obj({"storage": QTY}, ["storage"])}), "storageClassName": STR,
    })}, ["apiVersion", "kind", "metadata", "spec"]),
    "ConfigMap": obj({"apiVersion": {"const": "v1"}, "kind": STR, "metadata": META, "data": MAP},
                     ["apiVersion", "kind", "metadata"]),
}


@check
def k8s_schema():
    import jsonschema
    docs = k8s_docs()
    kinds = sorted(k for k, _ in docs)
    need(kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"], kinds)
    for (kind, name), d in docs.items():
        try:
            jsonschema.validate(d, K8S_SCHEMAS[kind])
        except jsonschema.ValidationError as e:
            raise AssertionError("%s/%s: %s at %s" % (kind, name, e.message, "/".join(map(str, e.absolute_path))))


k8s_ctx = {}


@check
def k8s_wiring():
    """Selectors, ports, probes, GPU, volume and the HPA's target and metric
    fit together and fit nesfd (flags accepted, grace above its own)."""
    docs = k8s_docs()
    dep, svc, hpa = docs[("Deployment", "nesfd")], docs[("Service", "nesfd")], docs[("HorizontalPodAutoscaler", "nesfd")]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    need(all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()), "selector misses the pods")
    need(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects no pod")
    c = pod["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(svc["spec"]["ports"][0]["targetPort"] in port_names, "Service targetPort is not a container port")
    need(c["args"][c["args"].index("--listen") + 1].endswith(":%d" % port_names["http"]), "nesfd listens elsewhere")
    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready"),
                        ("startupProbe", "/v2/health/ready")):
        need(c[probe]["httpGet"]["path"] == path and c[probe]["httpGet"]["port"] in port_names, "%s: %s" % (probe, c[probe]))
    for part in ("requests", "limits"):
        need(int(c["resources"][part].get("nvidia.com/gpu", 0)) == 1, "no nvidia.com/gpu %s" % part)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    need(mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"], "models not mounted read-only")
    claim = vols["models"]["persistentVolumeClaim"]["claimName"]
    need(("PersistentVolumeClaim", claim) in docs, "claim %s is not defined" % claim)
    need(c["args"][c["args"].index("--model") + 1].split("=", 1)[1].startswith("/models/"), "model not from the volume")
    need(pod["spec"]["terminationGracePeriodSeconds"] > 60 + 5, "grace must exceed nesfd's 60 s drain + preStop")
    need(pod["spec"]["securityContext"]["runAsUser"] == 10001, "not the image's nesf user")
    ref = hpa["spec"]["scaleTargetRef"]
    need((ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"]), "HPA scales %s" % ref)
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(docs[("ConfigMap", "nesfd-prometheus-adapter-rules")]["data"]["config.yaml"])["rules"]
    need(any(r["name"]["as"] == metric and metric in r["seriesQuery"] for r in rules),
         "prometheus-adapter serves no %s" % metric)
    nesfd_check(c["args"], "k8s Deployment args")
    k8s_ctx["args"], k8s_ctx["metric"], k8s_ctx["probes"] = c["args"], metric, [c[p]["httpGet"]["path"] for p in
                                                                                 ("livenessProbe", "readinessProbe")]



@check
def k8s_against_real_nesfd():
    """The probe paths answer 200 without a token on a real nesfd that has
    one, and /metrics has the HPA's metric."""
    need(k8s_ctx, "k8s_wiring did not pass")
    sys.path.insert(0, os.path.join(ROOT, "tests", "clients"))
    from nesfd_proc import Nesfd
    import urllib.request
    with tempfile.NamedTemporaryFile("w", suffix=".token") as tok:
        tok.write("k8s-test-token\n")
        tok.flush()
        with Nesfd(extra=["--token-file", tok.name], token="k8s-test-token") as d:
            for path in k8s_ctx["probes"]:
                with urllib.request.urlopen(d.url + path, timeout=10) as r:
                    need(r.status == 200, "%s: %d" % (path, r.status))
            req = urllib.request.Request(d.url + "/metrics", headers={"Authorization": "Bearer k8s-test-token"})
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
            need(re.search(r"^%s\{model=\"test\"\} \d+$" % k8s_ctx["metric"], text, re.M),
                 "/metrics has no %s gauge" % k8s_ctx["metric"])


passed = sum(ok for _, ok in results)
print("not verified here: CUDA image pulls, the NVIDIA runtime, systemd start, a Kubernetes cluster "
      "(tests/deploy/image.sh builds and runs the CPU image)")
print("%d passed, %d failed" % (passed, len(results) - passed))
sys.exit(0 if passed == len(results) else 1)
