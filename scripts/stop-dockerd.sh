#!/usr/bin/env bash
# Stop the dockerd whose pid is in the given pid file (written by ensure-docker.sh when it
# started one). Does nothing when the file is absent or empty, or when the pid no longer
# belongs to a dockerd (exited, pid reused). SIGTERM first (dockerd stops containerd and
# its containers), SIGKILL after 30 s.
set -euo pipefail
# shellcheck source=scripts/_common.sh
. "$(dirname "$0")/_common.sh"

pidfile="${1:?usage: stop-dockerd.sh PIDFILE}"
[ -s "$pidfile" ] || exit 0
pid="$(cat "$pidfile")"
if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
    log "pid $pid from $pidfile is not a running dockerd; nothing to stop"
    exit 0
fi
log "stopping the dockerd we started (pid $pid)"
kill -TERM "$pid"
for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { log "dockerd $pid stopped"; exit 0; }
    sleep 0.1
done
log "dockerd $pid did not stop within 30 s; killing it"
kill -KILL "$pid" 2>/dev/null || true
