#!/usr/bin/env bash
# Build the pinned Kubernetes control plane that the integration tests run on loopback.
#
# This script owns the binaries under ${ROLEGATE_CACHE:-~/.cache/rolegate}/k8s-<version>/bin:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and helm, all
# compiled from Go modules pinned in versions.env (no release downloads, no container engine);
# and, with --node, the real node's under node-<version>/ (kubelet, kube-proxy, containerd,
# ctr, the runc shim, crictl, the CNI plugins, the pause and test images) and, under
# gpuplugin-<version>/, the fake GPU device plugin.
#
#   devstack/k8s/build.sh          build what is missing (a no-op when the cache is complete)
#   devstack/k8s/build.sh --pin    regenerate gomod/*/go.mod and go.sum from versions.env
#   devstack/k8s/build.sh --print  print the cache's bin dir and exit (built or not)
#   devstack/k8s/build.sh --node   build the real node (kubelet, containerd, ...) into node-<version>/
#   devstack/k8s/build.sh --print-node  print the node cache's directory and exit
#   devstack/k8s/build.sh --print-gpu-plugin  print the fake GPU device plugin's path (--node builds it)
#
# `python -m devstack build k8s` (and `build node`) runs it with its output kept in a build log
# and only the progress lines shown.
#
# Environment: ROLEGATE_CACHE (cache root), GO (the go binary; default: go on PATH, then
# /usr/local/go/bin/go), and Go's own (GOPROXY, GOCACHE, GOMODCACHE, ...).
#
# k8s.io/kubernetes replaces every k8s.io staging module with ./staging/..., so `go install`
# refuses it; gomod/kubernetes is a wrapper module that requires it and replaces each staging
# module with its v0.<minor>.<patch> release. etcd's server module has replace directives too,
# so it gets its own wrapper (gomod/etcd), kept apart so the two never fight over versions.
# kwok and helm have no replace directives and are built with `go install pkg@version`.
#
# Builds run with at most two parallel jobs (-p 2, GOMAXPROCS=2), into a temporary directory
# that is renamed into place only after its stamp file is written, so an interrupted build
# never looks complete. A cold build (empty Go module and build caches) took 12.5 minutes on
# two cores here; with Go's build cache warm, under a minute.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${ROLEGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rolegate}
dest="$cache_root/k8s-$KUBE_VERSION"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
# The real node's commands, from the same wrapper module (pinned with it, built by --node).
node_kube_cmds=(kubelet kube-proxy)
# kwok's default stages, as kwokctl uses them: nodes become Ready and keep a Lease, pods run.
kwok_stages=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)
started=$SECONDS

log() { printf '[build.sh %4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

# The stamp holds the pins (versions.env's KEY=value lines: comments may change freely) and
# the wrapper modules' go.sum: any change to them rebuilds. build.py computes the same.
expected_stamp() {
    { grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$here/versions.env"
      cat "$here/gomod/kubernetes/go.sum" "$here/gomod/etcd/go.sum"; } | sha256sum | cut -d' ' -f1
}

cache_complete() {
    [[ -f "$dest/stamp" ]] && [[ "$(cat "$dest/stamp")" == "$(expected_stamp)" ]] || return 1
    local b
    for b in "${binaries[@]}"; do [[ -x "$dest/bin/$b" ]] || return 1; done
    [[ -f "$dest/kwok/stages.yaml" ]]
}

find_go() {
    if [[ -n "${GO:-}" ]]; then
        [[ -x "$GO" ]] || die "GO=$GO is not an executable; unset it or point it at a Go >= 1.26"
    elif command -v go >/dev/null 2>&1; then
        GO=$(command -v go)
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        die "Go not found on PATH nor at /usr/local/go/bin/go; install Go >= 1.26 (https://go.dev/dl/)"
    fi
    local v
    v=$("$GO" env GOVERSION) || die "'$GO env GOVERSION' failed"
    v=${v#go}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%.*}
    if (( major < 1 || (major == 1 && minor < 26) )); then
        die "Go $v at $GO is too old: etcd $ETCD_VERSION and kwok $KWOK_VERSION need Go >= 1.26"
    fi
    log "using $GO (go$v), GOPROXY=$("$GO" env GOPROXY)"
}

# Go environment for every build: local toolchain only, two jobs at most.
export GOTOOLCHAIN=local GOMAXPROCS=2 CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"

# Fetch the modules a wrapper needs, with a clear error when the module proxy cannot answer.
download() {
    local dir=$1
    log "downloading modules for $(basename "$dir") (go mod download)"
    if ! (cd "$dir" && "$GO" mod download -x 2>"$tmp/download.log"); then
        tail -n 20 "$tmp/download.log" >&2
        die "go mod download failed in $dir: is the Go module proxy ($("$GO" env GOPROXY)) reachable?"
    fi
}

# Run a go build/install, printing a line per 100 packages compiled and every other line
# (errors) as is. Arguments: the directory to run in, then the go command line.
go_progress() {
    local dir=$1; shift
    local status=0
    (cd "$dir" && "$GO" "$1" -v "${@:2}" 2>&1) | awk '
        /^[^ :#]+$/ { n++; if (n % 100 == 0) printf "  ... %d packages compiled\n", n; fflush(); next }
        { print; fflush() }' >&2 || status=$?
    return "$status"
}

# The -ldflags of every k8s.io/kubernetes command: stripped, with the version stamps that
# `--version` and the API's /version report.
kube_ldflags() {
    local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    local ld="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ld+=" -X $pkg.gitCommit=$KUBE_COMMIT -X $pkg.gitTreeState=clean"
        ld+=" -X $pkg.buildDate=$KUBE_BUILD_DATE"
    done
    printf '%s' "$ld"
}

pin() {
    find_go
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    local minor=${KUBE_VERSION#v1.}
    local staging_version="v0.$minor"
    local kdir="$here/gomod/kubernetes" edir="$here/gomod/etcd"

    log "pinning k8s.io/kubernetes $KUBE_VERSION (staging modules at $staging_version)"
    rm -f "$kdir/go.mod" "$kdir/go.sum"
    (cd "$kdir" && "$GO" mod init rolegate.dev/tests/cluster/kubernetes >/dev/null 2>&1)
    local gomod
    gomod=$(cd "$kdir" && "$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [[ -f "$gomod" ]] || die "could not fetch the go.mod of k8s.io/kubernetes@$KUBE_VERSION"
    local edits=(-require="k8s.io/kubernetes@$KUBE_VERSION" -godebug=default=go1.24)
    local mod
    # Every `k8s.io/<name> v0.0.0` require of the tag's go.mod is a staging module.
    for mod in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod"); do
        edits+=(-replace="$mod=$mod@$staging_version")
    done
    (cd "$kdir" && "$GO" mod edit -go=1.25.0 "${edits[@]}")
    local cmd
    for cmd in "${kube_cmds[@]}" "${node_kube_cmds[@]}"; do
        (cd "$kdir" && "$GO" get -tool "k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION")
    done
    (cd "$kdir" && "$GO" mod tidy)

    log "pinning go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    rm -f "$edir/go.mod" "$edir/go.sum"
    (cd "$edir" && "$GO" mod init rolegate.dev/tests/cluster/etcd >/dev/null 2>&1)
    (cd "$edir" && "$GO" mod edit -go=1.26.0 && "$GO" get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
        && "$GO" mod tidy)
    log "done: review and commit devstack/k8s/gomod/*/go.mod and go.sum"
}

build() {
    mkdir -p "$cache_root"
    # One build at a time per cache (parallel pytest sessions may all ask for one).
    exec 9>"$cache_root/.build.lock"
    if ! flock -n 9; then
        log "another build holds $cache_root/.build.lock; waiting for it"
        flock 9
    fi
    if cache_complete; then
        log "cache complete: $dest/bin"
        echo "$dest/bin"
        return 0
    fi
    find_go
    tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    local out="$tmp/stage/bin"
    mkdir -p "$out"
    local kdir="$here/gomod/kubernetes" edir="$here/gomod/etcd"
    grep -Eq "k8s.io/kubernetes $KUBE_VERSION( |\$)" "$kdir/go.mod" \
        || die "gomod/kubernetes/go.mod does not pin k8s.io/kubernetes $KUBE_VERSION; run $0 --pin"
    grep -Eq "go.etcd.io/etcd/server/v3 $ETCD_VERSION( |\$)" "$edir/go.mod" \
        || die "gomod/etcd/go.mod does not pin go.etcd.io/etcd/server/v3 $ETCD_VERSION; run $0 --pin"

    local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    local kube_ld pkg
    kube_ld=$(kube_ldflags)
    local common=(-p 2 -trimpath)

    download "$edir"
    log "[1/4] building etcd $ETCD_VERSION"
    go_progress "$edir" build "${common[@]}" -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3

    download "$kdir"
    log "[2/4] building ${kube_cmds[*]} $KUBE_VERSION (the long part: ~4000 packages)"
    local pkgs=()
    for pkg in "${kube_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$pkg"); done
    go_progress "$kdir" build "${common[@]}" -ldflags "$kube_ld" -o "$out/" "${pkgs[@]}"

    log "[3/4] building kwok $KWOK_VERSION"
    export GOBIN="$out"
    go_progress "$tmp" install "${common[@]}" \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

    # kwok (unlike kwokctl) has no built-in stages: ship the default ones of the pinned release.
    local kwok_src f
    kwok_src=$(cd "$tmp" && "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    mkdir -p "$tmp/stage/kwok"
    for f in "${kwok_stages[@]}"; do
        [[ -f "$kwok_src/kustomize/stage/$f" ]] || die "kwok $KWOK_VERSION has no stage file $f"
        printf -- '---\n'
        cat "$kwok_src/kustomize/stage/$f"
    done >"$tmp/stage/kwok/stages.yaml"

    log "[4/4] building helm $HELM_VERSION"
    local helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    helm_ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        helm_ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
    done
    go_progress "$tmp" install "${common[@]}" -ldflags "$helm_ld" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

    local b
    for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || die "build produced no $b"; done
    "$out/kube-apiserver" --version >&2
    # The stamp goes last; the rename makes the whole directory appear at once.
    expected_stamp >"$tmp/stage/stamp"
    rm -rf "$dest.old"
    if [[ -e "$dest" ]]; then mv "$dest" "$dest.old"; fi
    mv "$tmp/stage" "$dest"
    rm -rf "$dest.old"
    log "built in $(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s: $(du -sh "$dest" | cut -f1)"
    echo "$dest/bin"
}

# -- the real node: ${cache_root}/node-<version>/ ------------------------------------------------
# bin/: kubelet and kube-proxy (from gomod/kubernetes, with the control plane's pins), containerd,
# ctr, containerd-shim-runc-v2 and crictl; cni/: the CNI plugins; images/: OCI archives of the
# pause image and the test image, built from node/ (static Go programs) with umoci. runc and
# umoci are Debian packages (devstack/apt.py installs them). `go install pkg@version` for
# everything outside k8s.io/kubernetes: none of those modules has replace directives.
node_dest="$cache_root/node-$KUBE_VERSION"
node_binaries=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 crictl)
cni_plugins=(main/bridge ipam/host-local main/loopback meta/portmap)
# name:tag:entrypoint:user of each image; the tag is the layout's ref, which
# `ctr images import --base-name localhost/<name>` turns into localhost/<name>:<tag>.
node_images=(pause:3.10:/pause:65535 nodetest:1:/nodetest:65532)
node_sources=(node/go.mod node/pause/main.go node/nodetest/main.go)

# The node's stamp: the pins, the kubernetes wrapper's go.sum and the image sources (build.py
# computes the same).
node_expected_stamp() {
    { grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$here/versions.env"
      cat "$here/gomod/kubernetes/go.sum"
      local f; for f in "${node_sources[@]}"; do cat "$here/$f"; done; } | sha256sum | cut -d' ' -f1
}

node_complete() {
    [[ -f "$node_dest/stamp" ]] && [[ "$(cat "$node_dest/stamp")" == "$(node_expected_stamp)" ]] || return 1
    local b i
    for b in "${node_binaries[@]}"; do [[ -x "$node_dest/bin/$b" ]] || return 1; done
    for b in "${cni_plugins[@]}"; do [[ -x "$node_dest/cni/${b#*/}" ]] || return 1; done
    for i in "${node_images[@]}"; do [[ -f "$node_dest/images/${i%%:*}.oci.tar" ]] || return 1; done
}

# An OCI archive of one static binary with umoci (no registry, no daemon). Arguments: the
# image's name, tag, entrypoint, user, the binary, the output archive.
oci_image() {
    local name=$1 tag=$2 entry=$3 user=$4 binary=$5 archive=$6
    local work="$tmp/img-$name"
    mkdir -p "$work/rootfs"
    install -m 0755 "$binary" "$work/rootfs$entry"
    tar --owner=0 --group=0 --numeric-owner --sort=name --mtime=@0 -C "$work/rootfs" \
        -cf "$work/layer.tar" .
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:$tag"
    umoci raw add-layer --image "$work/oci:$tag" "$work/layer.tar"
    umoci config --image "$work/oci:$tag" --config.entrypoint="$entry" \
        --config.user="$user:$user" --architecture=amd64 --os=linux
    umoci gc --layout "$work/oci"
    tar -C "$work/oci" -cf "$archive" .
}

# The fake GPU device plugin (node/gpuplugin: a module of its own, as it needs grpc and
# k8s.io/kubelet) in a cache entry of its own, gpuplugin-<version>/bin/, so its sources do not
# key the node's. Its stamp: the plugin's sources (nodegpu.py computes the same).
gpu_dest="$cache_root/gpuplugin-$KUBE_VERSION"
gpu_binary=rolegate-fake-gpu-plugin
gpu_sources=(node/gpuplugin/go.mod node/gpuplugin/go.sum node/gpuplugin/main.go)

gpu_expected_stamp() {
    local f; for f in "${gpu_sources[@]}"; do cat "$here/$f"; done | sha256sum | cut -d' ' -f1
}

gpu_complete() {
    [[ -f "$gpu_dest/stamp" ]] && [[ "$(cat "$gpu_dest/stamp")" == "$(gpu_expected_stamp)" ]] \
        && [[ -x "$gpu_dest/bin/$gpu_binary" ]]
}

# Build the plugin into $gpu_dest (the caller holds the build lock and has found Go). About
# 70 s with an empty Go build cache, the modules downloaded (grpc, k8s.io/kubelet).
build_gpu_plugin() {
    gpu_complete && return 0
    local gtmp
    gtmp=$(mktemp -d "$cache_root/.build-gpu-XXXXXX")
    mkdir -p "$gtmp/stage/bin"
    log "[gpu] building the fake GPU device plugin (node/gpuplugin)"
    if ! (cd "$here/node/gpuplugin" && GOWORK=off "$GO" mod download \
            && GOWORK=off go_progress . build -p 2 -trimpath -ldflags "-s -w" \
                -o "$gtmp/stage/bin/$gpu_binary" .); then
        rm -rf "$gtmp"
        die "building node/gpuplugin failed (is the Go module proxy reachable?)"
    fi
    gpu_expected_stamp >"$gtmp/stage/stamp"
    rm -rf "$gpu_dest.old"
    if [[ -e "$gpu_dest" ]]; then mv "$gpu_dest" "$gpu_dest.old"; fi
    mv "$gtmp/stage" "$gpu_dest"
    rm -rf "$gpu_dest.old" "$gtmp"
    gpu_complete || die "the GPU plugin cache at $gpu_dest is incomplete after the build"
    log "[gpu] built $gpu_dest/bin/$gpu_binary"
}

build_node() {
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.build.lock"
    if ! flock -n 9; then
        log "another build holds $cache_root/.build.lock; waiting for it"
        flock 9
    fi
    if ! gpu_complete; then
        find_go
        build_gpu_plugin
    fi
    if node_complete; then
        log "cache complete: $node_dest"
        echo "$node_dest"
        return 0
    fi
    find_go
    command -v umoci >/dev/null 2>&1 || die "umoci not found: apt-get install umoci"
    tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    local stage="$tmp/stage"
    mkdir -p "$stage/bin" "$stage/cni" "$stage/images"
    local kdir="$here/gomod/kubernetes" cmd
    for cmd in "${node_kube_cmds[@]}"; do
        grep -q "^	k8s.io/kubernetes/cmd/$cmd\$" "$kdir/go.mod" \
            || die "gomod/kubernetes/go.mod has no tool k8s.io/kubernetes/cmd/$cmd; run $0 --pin"
    done
    local common=(-p 2 -trimpath) pkgs=() kube_ld
    kube_ld=$(kube_ldflags)
    for cmd in "${node_kube_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done

    download "$kdir"
    log "[1/5] building ${node_kube_cmds[*]} $KUBE_VERSION"
    go_progress "$kdir" build "${common[@]}" -ldflags "$kube_ld" -o "$stage/bin/" "${pkgs[@]}"

    log "[2/5] building containerd, ctr, containerd-shim-runc-v2 $CONTAINERD_VERSION"
    local ctrd=github.com/containerd/containerd/v2
    GOBIN="$stage/bin" go_progress "$tmp" install "${common[@]}" \
        -ldflags "-s -w -X $ctrd/version.Version=$CONTAINERD_VERSION" \
        "$ctrd/cmd/containerd@$CONTAINERD_VERSION" "$ctrd/cmd/ctr@$CONTAINERD_VERSION" \
        "$ctrd/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"

    log "[3/5] building the CNI plugins ${cni_plugins[*]#*/} $CNI_PLUGINS_VERSION"
    local cni=github.com/containernetworking/plugins p
    pkgs=()
    for p in "${cni_plugins[@]}"; do pkgs+=("$cni/plugins/$p@$CNI_PLUGINS_VERSION"); done
    GOBIN="$stage/cni" go_progress "$tmp" install "${common[@]}" \
        -ldflags "-s -w -X $cni/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" "${pkgs[@]}"

    log "[4/5] building crictl $CRICTL_VERSION"
    GOBIN="$stage/bin" go_progress "$tmp" install "${common[@]}" \
        -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"

    log "[5/5] building the images ${node_images[*]%%:*} (Go + umoci)"
    local image name tag entry user
    for image in "${node_images[@]}"; do
        IFS=: read -r name tag entry user <<<"$image"
        (cd "$here/node" && GOWORK=off "$GO" build "${common[@]}" -ldflags "-s -w" \
            -o "$tmp/$name" "./$name") || die "building node/$name failed"
        oci_image "$name" "$tag" "$entry" "$user" "$tmp/$name" "$stage/images/$name.oci.tar"
    done

    "$stage/bin/kubelet" --version >&2
    "$stage/bin/containerd" --version >&2
    node_expected_stamp >"$stage/stamp"
    rm -rf "$node_dest.old"
    if [[ -e "$node_dest" ]]; then mv "$node_dest" "$node_dest.old"; fi
    mv "$stage" "$node_dest"
    rm -rf "$node_dest.old"
    node_complete || die "the node cache at $node_dest is incomplete after the build"
    log "built in $(( (SECONDS - started) / 60 ))m$(( (SECONDS - started) % 60 ))s: $(du -sh "$node_dest" | cut -f1)"
    echo "$node_dest"
}

case "${1:-}" in
    --pin) pin ;;
    --print) echo "$dest/bin" ;;
    --node) build_node ;;
    --print-node) echo "$node_dest" ;;
    --print-gpu-plugin) echo "$gpu_dest/bin/$gpu_binary" ;;
    "") build ;;
    *) die "unknown argument '$1' (use --pin, --print, --node, --print-node, --print-gpu-plugin or nothing)" ;;
esac
