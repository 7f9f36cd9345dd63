# shellcheck shell=bash
# Shared helpers for end-to-end tests. Source it first thing in a *_test.sh:
#   source "$(dirname "$0")/lib.sh"; e2e_enter_lab "$0" "$@"
# A test script runs twice: on the host (to prepare guest images into $E2E_WORK, under the repo so
# the lab shares it) and then, through tools/lab/run-in-lab, where /dev/kvm is real (L1 of the
# nested lab, or directly on a KVM host) with CLONE_E2E_INSIDE=1.
set -euo pipefail

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
CLONE_BIN=${CLONE_BIN:-$E2E_ROOT/build/clone}
export CLONE_BIN
E2E_FAILURES=0

# The lab kernels (LAB_GENERIC_KERNEL, LAB_CLOUD_KERNEL, ...).
# shellcheck source=../../tools/lab/lab-env
source "$E2E_ROOT/tools/lab/lab-env"

e2e_enter_lab() {
  local script=$1
  shift
  if [[ ${CLONE_E2E_INSIDE:-0} == 1 ]]; then return 0; fi
  [[ -x $CLONE_BIN ]] || { echo "e2e: $CLONE_BIN not built (scripts/build)" >&2; exit 1; }
  local name
  name=$(basename "$script" .sh)
  E2E_WORK="$E2E_ROOT/build/e2e/$name"
  rm -rf "$E2E_WORK"
  mkdir -p "$E2E_WORK"
  export E2E_WORK
  if declare -F e2e_prepare >/dev/null; then e2e_prepare; fi
  CLONE_E2E_INSIDE=1 exec "$E2E_ROOT/tools/lab/run-in-lab" --timeout "${E2E_TIMEOUT:-1200}" ${E2E_LAB_MEM:+--mem "$E2E_LAB_MEM"} \
    --env E2E_WORK --env CLONE_BIN --env CLONE_E2E_INSIDE=1 -- bash "$script" "$@"
}

# mkinitrd OUT INIT [SRC:DEST...]
e2e_initrd() { "$E2E_ROOT/tests/guest/mkinitrd" "$@" >/dev/null; }

# e2e_modules MODDIR OUTDIR NAME... — copies the named modules and their dependencies (from
# MODDIR/modules.dep; built-ins are skipped) into OUTDIR, and writes OUTDIR/order: the module
# names in load order, for an init that runs `for m in $(cat /modules/order); do insmod ...`.
e2e_modules() {
  local moddir=$1 outdir=$2
  shift 2
  mkdir -p "$outdir"
  : >"$outdir/order"
  local -A seen=()
  _e2e_mod() {
    local name=$1 line path deps dep
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    line=$(grep -E "(^|/)${name//_/[-_]}\.ko:" "$moddir/modules.dep" | head -1) || true
    if [[ -z $line ]]; then
      grep -qE "(^|/)${name//_/[-_]}\.ko$" "$moddir/modules.builtin" 2>/dev/null && return 0
      echo "e2e_modules: no module $name in $moddir" >&2
      return 1
    fi
    path=${line%%:*}
    deps=${line#*:}
    for dep in $deps; do
      dep=$(basename "$dep" .ko)
      _e2e_mod "$dep" || return 1
    done
    cp "$moddir/$path" "$outdir/"
    basename "$path" .ko >>"$outdir/order"
  }
  local m
  for m in "$@"; do _e2e_mod "$m" || return 1; done
}

pass() { printf 'PASS: %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*"
  E2E_FAILURES=$((E2E_FAILURES + 1))
}
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# Field of a "CLONE-REPORT k=v ..." line: report_field FILE KEY
report_field() { grep -a '^CLONE-REPORT ' "$1" | tr -d '\r' | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

e2e_finish() {
  if ((E2E_FAILURES > 0)); then
    echo "$E2E_FAILURES check(s) failed"
    exit 1
  fi
  echo "all checks passed"
}

# e2e_debian_image OUT — a bookworm rootfs made by `clone rootfs create --distro debian` (with the
# guest agent and its systemd unit; hostname debian-e2e), copied sparse to OUT. debootstrap takes
# minutes, so the image is built once per clone-agent binary and rootfs_create.cc, and kept in
# build/e2e-cache (tests that boot it read-write get their own copy).
e2e_debian_image() {
  local out=$1 cache key agent
  agent="$(dirname "$CLONE_BIN")/clone-agent"
  key=$( (sha256sum "$agent" "$E2E_ROOT/src/image/rootfs_create.cc" | cut -c1-64; echo debian-bookworm-v1) | sha256sum | cut -c1-16)
  cache="$E2E_ROOT/build/e2e-cache/debian-$key.img"
  if [[ ! -f $cache ]]; then
    mkdir -p "$(dirname "$cache")"
    rm -f "$E2E_ROOT"/build/e2e-cache/debian-*.img
    "$CLONE_BIN" rootfs create --distro debian --suite bookworm --size 1G --hostname debian-e2e -o "$cache.tmp"
    mv "$cache.tmp" "$cache"
  fi
  cp --sparse=always "$cache" "$out"
}

# VM helpers for tests that run VMs with the agent under $CLONE_RUNTIME_DIR.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
# wait_agent ID [TRIES]: 0 once `clone exec` works (TRIES half-second attempts, default 240).
wait_agent() {
  for _ in $(seq 1 "${2:-240}"); do
    "$CLONE_BIN" exec --vm-id "$1" --timeout 10 -- true 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
# pid_of ID: the VM process's pid (from info.json).
pid_of() { sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$CLONE_RUNTIME_DIR/vms/$1/info.json" 2>/dev/null; }
# stop_vm ID: forced shutdown through the control API; waits for the process to exit.
stop_vm() {
  local pid
  pid=$(pid_of "$1")
  curl -s -o /dev/null --unix-socket "$CLONE_RUNTIME_DIR/vms/$1/control.sock" -X PUT \
    -H 'Content-Type: application/json' -d '{"mode":"force"}' http://localhost/vm/shutdown || true
  [[ -n $pid ]] || return 0
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  return 1
}
# vm_count: VM directories under $CLONE_RUNTIME_DIR/vms.
vm_count() { { find "$CLONE_RUNTIME_DIR/vms" -mindepth 1 -maxdepth 1 -type d 2>/dev/null || true; } | wc -l; }
