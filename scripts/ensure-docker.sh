#!/usr/bin/env bash
# Make sure a Docker engine answers on the project's socket (DOCKER_HOST, default
# unix:///var/run/docker.sock), and say which of these happened:
#   - an engine already answers: leave it alone (never restart or stop an engine we did not start);
#   - dockerd is not installed: install Debian's docker.io, then start it;
#   - dockerd is installed but not running: start it in the background (no systemd on these
#     machines), in its own session so a Ctrl-C in the calling terminal does not stop it.
# A dockerd started here writes its pid to FHD_DOCKERD_PIDFILE (dockerd's own --pidfile, so the
# file is right even when setsid forks, and dockerd removes it when it exits). Callers that must
# stop only the engine they started (.ci/run) pass a fresh path and give it to stop-dockerd.sh.
#
# Environment:
#   FHD_DOCKERD_PIDFILE  default /run/fractal-hostd-dockerd.pid
#   FHD_DOCKERD_LOG      default /var/log/fractal-hostd-dockerd.log (appended)
#   FHD_DOCKER_WAIT      seconds to wait for /_ping after starting, default 60
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

sock="$(docker_socket)"
pidfile="${FHD_DOCKERD_PIDFILE:-/run/fractal-hostd-dockerd.pid}"
logfile="${FHD_DOCKERD_LOG:-/var/log/fractal-hostd-dockerd.log}"
wait_s="${FHD_DOCKER_WAIT:-60}"

if docker_answers "$sock"; then
    log "a Docker engine already answers on $sock; leaving it alone"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "no Docker engine answers on $sock, and starting one needs root"

answers_within() {  # answers_within SECONDS: poll /_ping until it answers or time is up
    local deadline=$((SECONDS + $1))
    until docker_answers "$sock"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
    log "installed docker.io"
    # Its postinst starts dockerd through the init script where policy-rc.d allows it.
    if answers_within 10; then
        log "the docker.io install started an engine on $sock; using it"
        exit 0
    fi
fi

args=(--pidfile "$pidfile")
[ "$sock" = /var/run/docker.sock ] || args+=(-H "unix://$sock")

mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
# A pid file left by a dockerd that died (its pid now free or reused) would stop dockerd
# from starting, or look like "our dockerd exited" below.
if [ -s "$pidfile" ] && [ "$(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null)" != dockerd ]; then
    rm -f "$pidfile"
fi
touch "$logfile"
log_start=$(($(stat -c %s "$logfile") + 1))  # look only at what this dockerd writes
log "no Docker engine answers on $sock; starting dockerd (log: $logfile, pid file: $pidfile)"
printf '\n=== %s: dockerd started by %s\n' "$(date -u +%FT%TZ)" "$0" >>"$logfile"
setsid dockerd "${args[@]}" >>"$logfile" 2>&1 </dev/null &

deadline=$((SECONDS + wait_s))
while ! docker_answers "$sock"; do
    failed=""
    if [ -s "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        failed="dockerd exited"
    elif tail -c "+$log_start" "$logfile" | grep -q 'failed to start daemon'; then
        failed="dockerd failed to start"
    elif [ "$SECONDS" -ge "$deadline" ]; then
        failed="dockerd did not answer /_ping on $sock within ${wait_s}s"
    fi
    if [ -n "$failed" ]; then
        log "error: $failed; end of $logfile:"
        tail -c "+$log_start" "$logfile" | tail -n 40 >&2
        "$(dirname "$0")/stop-dockerd.sh" "$pidfile" || true
        exit 1
    fi
    sleep 0.2
done
log "dockerd (pid $(cat "$pidfile" 2>/dev/null || echo '?')) answers on $sock"
