#!/usr/bin/env bash
# The nightly darkroom run, for cron (darkroom-nightly.cron) and systemd (deploy/systemd/).
#
# Runs `darkroom run $DARKROOM_JOB` here (Ray local, or $RAY_ADDRESS), or, when
# $DARKROOM_SUBMIT_ADDRESS is set, `darkroom submit $DARKROOM_JOB --wait` to that cluster's
# dashboard (http://HEAD:8265), and acts on darkroom's exit code:
#   0  every image ok                     → log, exit 0
#   3  committed, some images are error rows (corrupt, too large, ...)
#                                          → log, notify, exit 3 (the rows say why: query the manifest)
#   2  bad job file                       → log, notify, exit 2 (retrying cannot help)
#   1  the run failed (cluster, storage, another run holds the output's lease)
#                                          → retry $DARKROOM_RETRIES times, $DARKROOM_RETRY_DELAY s apart
#                                            (each retry resumes: committed shards are not redone),
#                                            then notify, exit 1
# Any other status (killed, darkroom not found) is handled like 1.
#
# Settings (environment):
#   DARKROOM_HOME           project directory (default: two levels above this script)
#   DARKROOM_JOB            job file, relative to DARKROOM_HOME (default: jobs/nightly-restore.yaml)
#   DARKROOM_BIN            the darkroom command (default: darkroom on PATH)
#   DARKROOM_SUBMIT_ADDRESS submit to this Ray cluster instead of running here
#   DARKROOM_RETRIES        retries after exit 1 (default: 1)
#   DARKROOM_RETRY_DELAY    seconds before a retry (default: 300)
#   DARKROOM_NOTIFY         command called as: $DARKROOM_NOTIFY <exit code> <message> (mail, chat hook, ...)
#   DARKROOM_LOCK           lock file that keeps two nightly runs apart (default: /tmp/darkroom-nightly.lock)
set -uo pipefail

cd "${DARKROOM_HOME:-$(dirname "$(readlink -f "$0")")/../..}" || exit 1
job=${DARKROOM_JOB:-jobs/nightly-restore.yaml}
darkroom=${DARKROOM_BIN:-darkroom}
retries=${DARKROOM_RETRIES:-1}
delay=${DARKROOM_RETRY_DELAY:-300}
lock=${DARKROOM_LOCK:-/tmp/darkroom-nightly.lock}

log() { printf '%s darkroom-nightly: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
notify() {
  if [ -n "${DARKROOM_NOTIFY:-}" ]; then
    ${DARKROOM_NOTIFY} "$1" "$2" || log "notify command failed"
  fi
}
run_once() {
  if [ -n "${DARKROOM_SUBMIT_ADDRESS:-}" ]; then
    "$darkroom" submit "$job" --address "$DARKROOM_SUBMIT_ADDRESS" --wait
  else
    "$darkroom" run "$job" --log-format plain
  fi
}

exec 9>"$lock"
if ! flock -n 9; then
  log "another nightly run holds $lock: not starting"
  notify 1 "darkroom nightly: previous run still going, tonight's skipped"
  exit 1
fi

attempt=0
while :; do
  attempt=$((attempt + 1))
  log "attempt $attempt: $darkroom ${DARKROOM_SUBMIT_ADDRESS:+submit --address $DARKROOM_SUBMIT_ADDRESS }$job in $(pwd)"
  run_once
  code=$?
  case $code in
    0)
      log "ok"
      exit 0
      ;;
    3)
      log "finished with error rows (exit 3): see the manifest's status/error_type columns"
      notify 3 "darkroom nightly ($job): finished, some images are error rows"
      exit 3
      ;;
    2)
      log "bad job file $job (exit 2): nothing ran"
      notify 2 "darkroom nightly: bad job file $job"
      exit 2
      ;;
    *)
      if [ "$attempt" -le "$retries" ]; then
        log "run failed (exit $code): retrying in ${delay}s (the retry resumes the run)"
        sleep "$delay"
        continue
      fi
      log "run failed (exit $code) after $attempt attempt(s)"
      notify 1 "darkroom nightly ($job): run failed (exit $code) after $attempt attempt(s)"
      exit 1
      ;;
  esac
done
