#!/bin/sh
# Run by the darkroom-nightly CronJob (nightly-cronjob.yaml): create tonight's RayJob from
# $RAYJOB_MANIFEST, prune old ones, wait until it ends, and exit with darkroom's exit code
# (0 ok, 3 error rows, 2 bad job file, anything else → 1) so the CronJob's podFailurePolicy can act.
set -eu
manifest=${RAYJOB_MANIFEST:-/etc/darkroom-nightly/rayjob.yaml}
keep=${KEEP_RAYJOBS:-7}
poll=${POLL_SECONDS:-30}

name=$(kubectl create -f "$manifest" -o name)          # e.g. rayjob.ray.io/darkroom-nightly-x7k2p
echo "created $name"

# Keep the newest $keep nightly RayJobs (tonight's included); delete the rest.
kubectl get rayjobs -l app.kubernetes.io/name=darkroom-nightly --sort-by=.metadata.creationTimestamp -o name \
  | awk -v keep="$keep" '{ line[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print line[i] }' \
  | xargs -r kubectl delete || echo "warning: could not prune old RayJobs"

status=""
deployment=""
while :; do
  status=$(kubectl get "$name" -o jsonpath='{.status.jobStatus}' || true)
  deployment=$(kubectl get "$name" -o jsonpath='{.status.jobDeploymentStatus}' || true)
  case "$status" in
    SUCCEEDED) echo "$name: SUCCEEDED"; exit 0 ;;
    FAILED | STOPPED) break ;;
  esac
  if [ "$deployment" = "Failed" ]; then break; fi   # never started (no cluster, submitter failed, deadline)
  sleep "$poll"
done

message=$(kubectl get "$name" -o jsonpath='{.status.message}' || true)
echo "$name: ${status:-$deployment}: $(printf '%s' "$message" | head -c 2000)"
code=$(printf '%s' "$message" | sed -n 's/.*exit code \([0-9][0-9]*\).*/\1/p' | head -n 1)
case "$code" in
  2 | 3) exit "$code" ;;
  *) exit 1 ;;
esac
