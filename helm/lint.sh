#!/usr/bin/env bash
# `helm lint --strict` of helm/rolegate with each of its ci/*-values.yaml, using the pinned
# helm that devstack builds (`python -m devstack build k8s`). Exits non-zero on the first
# failure. Usage: helm/lint.sh   (from anywhere)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$("$here/../devstack/k8s/build.sh" --print)
helm="$bin/helm"
if [[ ! -x $helm ]]; then
    echo "no helm at $helm: run \`python -m devstack build k8s\` first" >&2
    exit 1
fi
chart="$here/rolegate"
for values in "$chart"/ci/*-values.yaml; do
    echo ">> helm lint --strict -f ci/$(basename "$values")"
    "$helm" lint --strict "$chart" -f "$values"
done
