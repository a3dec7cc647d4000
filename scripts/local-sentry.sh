#!/usr/bin/env bash
# A real Sentry-protocol server on loopback (bugsink, in a venv of its own, never a runtime
# dependency), so `make runprod` can be checked end to end without sentry.io:
#
#   scripts/local-sentry.sh            # prints SENTRY_DSN=... ; the server runs in the background
#   SENTRY_DSN=... FRACTAL_WEBSERVER_AUTH_SECRET=... make runprod
#   scripts/local-sentry.sh issues     # what bugsink grouped: one line per issue
#
# Environment: FHD_SENTRY_DIR (default /var/tmp/fractal-hostd-sentry), FHD_SENTRY_PORT (8765).
set -euo pipefail
dir="${FHD_SENTRY_DIR:-/var/tmp/fractal-hostd-sentry}"
port="${FHD_SENTRY_PORT:-8765}"
bin="$dir/venv/bin"
export DJANGO_SETTINGS_MODULE=bugsink_conf PYTHONPATH="$dir"

if [ ! -x "$bin/bugsink-manage" ]; then
    python3 -m venv "$dir/venv"
    "$bin/pip" install -q --disable-pip-version-check bugsink >"$dir/pip.log" 2>&1 \
        || { cat "$dir/pip.log" >&2; exit 1; }
fi
cd "$dir"
if [ ! -f bugsink_conf.py ]; then
    "$bin/bugsink-create-conf" --template local --port "$port" -o bugsink_conf.py >/dev/null
    "$bin/bugsink-manage" migrate -v0
    "$bin/bugsink-manage" migrate --database=snappea -v0
fi

if [ "${1:-}" = issues ]; then
    exec "$bin/bugsink-manage" shell -c "
from issues.models import Issue
for i in Issue.objects.all(): print(i.calculated_type, '|', i.calculated_value[:200])"
fi

dsn=$("$bin/bugsink-manage" shell -c "
from teams.models import Team
from projects.models import Project
team, _ = Team.objects.get_or_create(name='fractal')
project, _ = Project.objects.get_or_create(name='fractal-hostd', team=team)
print(project.dsn)" 2>/dev/null | tail -1)
if ! curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    setsid "$bin/bugsink-manage" runserver "127.0.0.1:$port" --noreload >>"$dir/server.log" 2>&1 </dev/null &
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
fi
echo "SENTRY_DSN=${dsn/localhost/127.0.0.1}"
