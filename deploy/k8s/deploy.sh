#!/usr/bin/env bash
# Roll out one environment in order: the migration Job first (and wait for it),
# then the services. Usage: deploy/k8s/deploy.sh dev|prod
# A Job's pod template is immutable, so the previous run is deleted first.
set -euo pipefail
env=${1:?usage: $0 dev|prod}
here=$(cd "$(dirname "$0")" && pwd)
overlay="$here/overlays/$env"
[ -d "$overlay/migrate" ] || { echo "no overlay $overlay" >&2; exit 2; }
# The kustomize the tests validated with (make tools), else the one in kubectl.
KUSTOMIZE=${KUSTOMIZE:-$(command -v kustomize || echo "$here/../../.run/bin/kustomize")}
build() { if [ -x "$KUSTOMIZE" ]; then "$KUSTOMIZE" build "$1"; else kubectl kustomize "$1"; fi; }
apply() { build "$1" | kubectl apply -f -; }
ns=$(build "$overlay/migrate" | awk '$1 == "namespace:" {print $2; exit}')

# Lag-based autoscaling (components/lag-autoscaling; prod): the HPAs' External
# metrics come from the cluster's prometheus-adapter. While it does not serve
# one, that HPA still scales up on CPU but never down: say so before anything
# is applied. A warning, not a stop: on a first rollout the adapter lists the
# metrics only once Prometheus has scraped the new pods.
external=$(build "$overlay" | sed -n 's/^ *name: \(erc8004_[a-z0-9_]*\)$/\1/p' | sort -u)
for metric in $external; do
  if ! kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$ns/$metric" >/dev/null 2>&1; then
    echo "[deploy] warning: the external metric $metric is not served in $ns (expected on a" \
      "first rollout); the platform's prometheus-adapter needs the rules of" \
      "deploy/k8s/components/lag-autoscaling/prometheus-adapter-rules.yaml (deploy/README.md," \
      "\"Autoscaling\"), else the HPA never scales down" >&2
  fi
done

kubectl -n "$ns" delete job erc8004-migrate --ignore-not-found --wait=true
apply "$overlay/migrate"
echo "[deploy] waiting for the migrations (job/erc8004-migrate in $ns)"
deadline=$((SECONDS + 900))
while :; do
  if kubectl -n "$ns" wait --for=condition=complete job/erc8004-migrate --timeout=10s >/dev/null 2>&1; then
    break
  fi
  if [ "$(kubectl -n "$ns" get job erc8004-migrate -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}')" = True ]; then
    kubectl -n "$ns" logs job/erc8004-migrate --tail=50 >&2 || true
    echo "[deploy] migrations failed: services not rolled out" >&2
    exit 1
  fi
  [ $SECONDS -lt $deadline ] || { echo "[deploy] migrations timed out" >&2; exit 1; }
done
apply "$overlay"
for d in ingest matcher dispatcher api indexer; do
  kubectl -n "$ns" rollout status "deployment/erc8004-$d" --timeout=10m
done
echo "[deploy] $env rolled out"
