#!/bin/sh
# Example worker: exits 75 (EX_TEMPFAIL) to tell kanband it hit a rate limit.
#
# Try it (examples/config.yaml maps the assignee `flaky-api` to this file):
#
#   touch "${TMPDIR:-/tmp}/kanban-rate-limited"    # pretend the API says "slow down"
#   kanban create "call the API" --assignee flaky-api
#   kanban runs t_xxxxxxxx     # outcome rate_limited; the task is ready again
#   kanban plan                # "rate-limit cooldown, ...s left"
#   rm "${TMPDIR:-/tmp}/kanban-rate-limited"       # after the cooldown it completes
#
# Exit 75 is not a failure: the run is closed as `rate_limited`, the task goes
# back to ready, the circuit breaker's counter is untouched, and the task is
# not started again until dispatch.rate_limit_cooldown has passed.
# Any other non-zero exit would be a crash and count toward the breaker.
#
# The marker file is RATE_LIMIT_MARKER (default $TMPDIR/kanban-rate-limited).
set -u
marker="${RATE_LIMIT_MARKER:-${TMPDIR:-/tmp}/kanban-rate-limited}"
if [ -e "$marker" ]; then
    echo "flaky-api: rate limited ($marker exists); exiting 75" >&2
    exit 75
fi
echo "flaky-api: no rate limit; working on $KANBAN_TASK"
exec kanban complete --summary "called the API for $KANBAN_TASK"
