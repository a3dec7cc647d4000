#!/usr/bin/env bash
# Self-test of ensure-docker.sh and stop-dockerd.sh without touching the real engine: a fake
# `dockerd` (a small Python HTTP server answering /_ping on a unix socket in a temporary
# directory, honouring --pidfile and -H like dockerd) stands first on PATH. Checks the
# start path, idempotence (a second call leaves the running engine alone), stopping only
# the started engine, a stale pid file, and both failure paths (daemon exits at once; never
# answers).
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"
scripts="$(cd "$(dirname "$0")" && pwd)"

tmp="$(mktemp -d)"
cleanup() {
    local pid
    pid="$(cat "$tmp/dockerd.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$pid" != "$$" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir "$tmp/bin"
python="$(python3 -c 'import sys; print(sys.executable)')"
cat >"$tmp/bin/dockerd" <<PY
#!$python
import argparse, http.server, os, signal, socketserver, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--pidfile", required=True)
parser.add_argument("-H", dest="host", required=True)
args = parser.parse_args()
mode = os.environ.get("FAKE_DOCKERD_MODE", "serve")
if mode == "fail":
    print("failed to start daemon: fake failure", flush=True)
    sys.exit(1)
with open(args.pidfile, "w") as f:
    f.write(str(os.getpid()))

def stop(*_):
    os.unlink(args.pidfile)  # like dockerd, remove the pid file on a clean exit
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
if mode == "hang":
    while True:
        time.sleep(1)

class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def address_string(self):
        return "unix"

time.sleep(0.5)  # like dockerd, answer only a while after starting
server = socketserver.UnixStreamServer(args.host.removeprefix("unix://"), Ping)
server.serve_forever()
PY
chmod +x "$tmp/bin/dockerd"

export PATH="$tmp/bin:$PATH"
export DOCKER_HOST="unix://$tmp/docker.sock"
export FHD_DOCKERD_PIDFILE="$tmp/dockerd.pid" FHD_DOCKERD_LOG="$tmp/dockerd.log"

fail() { log "FAILED: $*"; exit 1; }
expect_output() {  # expect_output PATTERN COMMAND...: run, require success and PATTERN in stderr
    local pattern="$1" out
    shift
    out="$("$@" 2>&1)" || fail "$* exited non-zero: $out"
    grep -q -- "$pattern" <<<"$out" || fail "$* did not say '$pattern': $out"
}

expect_output "starting dockerd" "$scripts/ensure-docker.sh"
docker_answers "$tmp/docker.sock" || fail "the started fake dockerd does not answer"
pid="$(cat "$FHD_DOCKERD_PIDFILE")"
[ "$(cat "/proc/$pid/comm")" = dockerd ] || fail "pid file does not name the started dockerd"

expect_output "already answers" "$scripts/ensure-docker.sh"
[ "$(cat "$FHD_DOCKERD_PIDFILE")" = "$pid" ] || fail "second call changed the pid file"

expect_output "stopping the dockerd we started" "$scripts/stop-dockerd.sh" "$FHD_DOCKERD_PIDFILE"
! kill -0 "$pid" 2>/dev/null || fail "dockerd $pid still runs after stop-dockerd.sh"
"$scripts/stop-dockerd.sh" "$FHD_DOCKERD_PIDFILE" || fail "stop-dockerd.sh without a pid file failed"
rm -f "$tmp/docker.sock"

# A stale pid file naming a live process that is not a dockerd (here: this script).
echo "$$" >"$FHD_DOCKERD_PIDFILE"
expect_output "starting dockerd" "$scripts/ensure-docker.sh"
[ "$(cat "$FHD_DOCKERD_PIDFILE")" != "$$" ] || fail "the stale pid file was kept"
"$scripts/stop-dockerd.sh" "$FHD_DOCKERD_PIDFILE" >/dev/null 2>&1
rm -f "$tmp/docker.sock"

if out="$(FAKE_DOCKERD_MODE=fail "$scripts/ensure-docker.sh" 2>&1)"; then
    fail "ensure-docker.sh succeeded although dockerd failed to start"
fi
grep -q "fake failure" <<<"$out" || fail "the dockerd log was not shown: $out"

if out="$(FAKE_DOCKERD_MODE=hang FHD_DOCKER_WAIT=1 "$scripts/ensure-docker.sh" 2>&1)"; then
    fail "ensure-docker.sh succeeded although dockerd never answered"
fi
grep -q "did not answer /_ping" <<<"$out" || fail "no timeout message: $out"
[ ! -s "$FHD_DOCKERD_PIDFILE" ] || fail "the dockerd that never answered was left running"

log "ensure-docker.sh and stop-dockerd.sh behave (start, reuse, stop, stale pid file, failure, timeout)"
