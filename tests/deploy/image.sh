#!/usr/bin/env bash
# tests/deploy/image.sh - builds the nesfd container image from deploy/Dockerfile
# and runs it, on a machine with buildah but no Docker engine and no registry
# access to the CUDA images:
#   1. a Debian 12 (bookworm) minbase root file system from Debian's packages
#      (debootstrap), cached as a tarball in $NESF_IMAGE_CACHE (default
#      /var/cache/nesf) so that reruns skip it;
#   2. that tarball imported as the base image localhost/nesf-debian12;
#   3. `buildah bud --isolation chroot` of deploy/Dockerfile with that base
#      for both stages, CUDA disabled and Debian's run-time library names
#      (the same file builds the CUDA image with its defaults); the packages
#      apt downloads are kept in $NESF_IMAGE_CACHE/apt for reruns;
#   4. the image's own ENTRYPOINT and CMD started with `buildah run
#      --isolation chroot --network host` (listening on a free loopback port
#      instead of 8080), which must answer /health, /ready, /v2/health/ready
#      and decode one latent with /decode.
# Needs root, buildah, debootstrap and network access to a Debian mirror
# ($NESF_DEBIAN_MIRROR, default deb.debian.org); exits 77 (skipped) when
# they are missing or NESF_IMAGE_TEST=0.  Prints the time of every step.
# Measured on the 2-core dev box under load: 4 min cold (debootstrap 2 min,
# build 1.8 min), ~2 min with the cache.
#   tests/deploy/image.sh                 (from anywhere; NESF_KEEP_IMAGE=1 keeps the image)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${NESF_IMAGE_CACHE:-/var/cache/nesf}
MIRROR=${NESF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAR=$CACHE/debian12-minbase.tar
BASE_IMAGE=localhost/nesf-debian12:latest
IMAGE=localhost/nesfd-cpu:image-test
RUNTIME_LIBS="libopenblas0-pthread libjansson4 libmicrohttpd12 libuuid1 libsymspg1"
T0=$(date +%s)

step() { echo "image.sh: [$(( $(date +%s) - T0 )) s] $*" >&2; }
skip() { echo "image.sh: SKIP: $*" >&2; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, buildah storage)"
command -v buildah >/dev/null || skip "buildah not installed (apt-get install buildah)"
command -v debootstrap >/dev/null || skip "debootstrap not installed (apt-get install debootstrap)"
command -v curl >/dev/null || skip "curl not installed"
[ "${NESF_IMAGE_TEST:-1}" != 0 ] || skip "NESF_IMAGE_TEST=0"
buildah info >/dev/null 2>&1 || skip "buildah cannot run here (buildah info fails)"
[ -s "$BASE_TAR" ] || curl -fsI --max-time 20 "$MIRROR/dists/bookworm/Release" >/dev/null \
  || skip "the Debian mirror $MIRROR cannot be reached (set NESF_DEBIAN_MIRROR)"

WORK=$(mktemp -d /tmp/nesf-image.XXXXXX)
CTR=
NESFD_PID=
cleanup() {
  if [ -n "$NESFD_PID" ]; then kill -TERM -- "-$NESFD_PID" 2>/dev/null || true; wait "$NESFD_PID" 2>/dev/null || true; fi
  [ -n "$CTR" ] && buildah rm "$CTR" >/dev/null 2>&1 || true
  [ "${NESF_KEEP_IMAGE:-0}" = 1 ] || buildah rmi "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. the Debian 12 base, debootstrapped once (temp file, then rename)
mkdir -p "$CACHE/apt/partial"
if [ ! -s "$BASE_TAR" ]; then
  step "debootstrap bookworm (minbase) from $MIRROR"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$WORK/rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$WORK/rootfs"
else
  step "Debian 12 base from the cache: $BASE_TAR"
fi

# 2. imported as an image (again only when the tarball is newer than it)
tar_time=$(stat -c %Y "$BASE_TAR")
img_time=$(buildah inspect --type image --format '{{.Docker.Config.Labels.nesf_base_tar}}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$img_time" != "$tar_time" ]; then
  step "importing the base as $BASE_IMAGE"
  CTR=$(buildah from scratch)
  MNT=$(buildah mount "$CTR")
  tar -C "$MNT" --numeric-owner -xf "$BASE_TAR"
  buildah umount "$CTR" >/dev/null
  buildah config --label nesf_base_tar="$tar_time" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$CTR"
  buildah commit -q "$CTR" "$BASE_IMAGE" >/dev/null
  buildah rm "$CTR" >/dev/null
  CTR=
fi

# 3. the image, from the repository's Dockerfile
step "buildah bud deploy/Dockerfile (CPU, base $BASE_IMAGE)"
buildah bud --isolation chroot --network host -q \
  --volume "$CACHE/apt:/var/cache/apt/archives" \
  --build-arg BUILD_IMAGE="$BASE_IMAGE" --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
  --build-arg CUDA=disabled --build-arg RUNTIME_LIBS="$RUNTIME_LIBS" \
  -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT" >"$WORK/bud.log" 2>&1 \
  || { tail -40 "$WORK/bud.log" >&2; exit 1; }
buildah inspect --type image "$IMAGE" >"$WORK/inspect.json"
# the image's own command: ENTRYPOINT, CMD and USER from its OCI config
conf() { /usr/bin/python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))["OCIv1"]["config"]
v = c.get(sys.argv[2]) or []
print("\n".join(v if isinstance(v, list) else [v]))' "$WORK/inspect.json" "$1"; }
mapfile -t ENTRY < <(conf Entrypoint)
mapfile -t CMD < <(conf Cmd)
USER_=$(conf User)
step "built $IMAGE: $(buildah images --format '{{.Size}}' "$IMAGE" | head -1)"
[ "${ENTRY[0]:-}" = /opt/nesf/bin/nesfd ] || { echo "image.sh: unexpected ENTRYPOINT ${ENTRY[*]}" >&2; exit 1; }
[ "$USER_" = nesf:nesf ] || { echo "image.sh: the image runs as '$USER_', not nesf" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CTR=$(buildah from "$IMAGE")
step "buildah run: ${ENTRY[*]} ${CMD[*]} --listen 127.0.0.1:$PORT"
setsid buildah run --isolation chroot --network host --user "$USER_" "$CTR" -- \
  "${ENTRY[@]}" "${CMD[@]}" --listen "127.0.0.1:$PORT" --backend cpu >"$WORK/nesfd.log" 2>&1 &
NESFD_PID=$!
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 300); do
  curl -fsS --max-time 2 "$URL/ready" >"$WORK/ready.json" 2>/dev/null && break
  kill -0 "$NESFD_PID" 2>/dev/null || { cat "$WORK/nesfd.log" >&2; echo "image.sh: nesfd exited" >&2; exit 1; }
  sleep 0.2
done
fail() { echo "image.sh: FAIL: $*" >&2; tail -20 "$WORK/nesfd.log" >&2; exit 1; }
grep -q '"ready":true' "$WORK/ready.json" 2>/dev/null || fail "/ready did not answer ready: $(cat "$WORK/ready.json" 2>/dev/null)"
curl -fsS "$URL/health" | grep -q '"status":"ok"' || fail "/health"
curl -fsS "$URL/v2/health/ready" | grep -q '"ready":true' || fail "/v2/health/ready"
LATENT=$(curl -fsS "$URL/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["models"][0]["latent_size"])')
# the latent of a real structure, so that the decode is a real one: the
# first of the web viewer's examples, encoded by the container
python3 - "$URL" "$LATENT" "$ROOT/clients/web/examples/examples.json" <<'EOF' || fail "/encode + /decode"
import json, sys, urllib.request
url, size, examples = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ex = json.load(open(examples))["examples"][0]["structure"]
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())
z = post("/encode", {"structures": [ex]})["latents"]
assert len(z) == 1 and len(z[0]) == size, "encode gave %r" % (z,)
s = post("/decode", {"latents": z, "format": ["json", "cif"]})["structures"][0]
assert "error" not in s, s
assert s["num_atoms"] > 0 and s["lattice"]["volume"] > 1 and "_cell_length_a" in s["cif"], s
print("image.sh: decoded %s (%d atoms, a = %.3f Å) inside the container" % (s["formula"], s["num_atoms"], s["lattice"]["a"]),
      file=sys.stderr)
EOF
# SIGTERM to nesfd itself (as a container runtime's stop does; buildah run
# would SIGKILL its child if signalled first): it must drain and exit 0
INNER=$(pgrep -g "$NESFD_PID" -x nesfd | head -1)
[ -n "$INNER" ] || fail "no nesfd process in the container's process group"
kill -TERM "$INNER"
wait "$NESFD_PID" || fail "the container exited with status $?"
NESFD_PID=
grep -q '"event":"stopped","clean":true' "$WORK/nesfd.log" || fail "nesfd did not stop cleanly on SIGTERM"
step "PASS: the image builds, starts, answers /ready and decodes"
