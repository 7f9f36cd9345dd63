#!/usr/bin/env bash
# lab_smoke.sh — end-to-end check of the nested KVM lab (tools/lab).
#
# Through tools/lab/run-in-lab (so: in L1 on a machine without KVM, directly on one with KVM):
#   1. /dev/kvm exists and is usable (in L1: kvm_amd is loaded with nested paging),
#   2. QEMU `-accel kvm -M microvm` boots the Debian cloud kernel with the init-report initrd
#      (tests/guest) to the CLONE-INIT-DONE marker, and the CLONE-REPORT line is sane.
# Exit 0 when all checks pass. Usage: tests/lab/lab_smoke.sh [--timeout SECONDS]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
timeout_s=${LAB_SMOKE_TIMEOUT:-600}
if [[ ${1:-} == --timeout ]]; then timeout_s=${2:?--timeout needs SECONDS}; fi

if [[ ${CLONE_LAB_SMOKE_INNER:-0} != 1 ]]; then
  exec "$repo/tools/lab/run-in-lab" --timeout "$timeout_s" --env CLONE_LAB_SMOKE_INNER=1 -- \
    "$here/lab_smoke.sh"
fi

# ---- inside L1 (or on a KVM host) --------------------------------------------------------------
passed=0 failed=0
pass() { printf 'lab_smoke: PASS %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'lab_smoke: FAIL %s\n' "$*"; failed=$((failed + 1)); }
finish() {
  printf 'lab_smoke: %d passed, %d failed\n' "$passed" "$failed"
  if ((failed)); then exit 1; fi
  exit 0
}

# 1. /dev/kvm
if [[ -c /dev/kvm && -r /dev/kvm && -w /dev/kvm ]]; then
  pass "/dev/kvm is a usable character device"
else
  fail "/dev/kvm missing or not read-write"
  finish
fi
if [[ ${CLONE_LAB_INSIDE:-0} == 1 ]]; then
  if [[ -d /sys/module/kvm_amd ]] && [[ $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null) == [Y1] ]]; then
    pass "kvm_amd loaded in L1 with nested paging (npt=$(cat /sys/module/kvm_amd/parameters/npt))"
  else
    fail "kvm_amd not loaded or nested paging off in L1"
  fi
fi

# 2. an L2 guest under QEMU -accel kvm -M microvm
# shellcheck source=tools/lab/lab-env
source "$repo/tools/lab/lab-env"
work=$(mktemp -d "${TMPDIR:-/tmp}/lab-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$repo/tests/guest/mkinitrd" "$work/report.cpio.gz" "$repo/tests/guest/init-report.sh"

t0=${EPOCHREALTIME//[!0-9]/}
rc=0
timeout -k 5 240 qemu-system-x86_64 -accel kvm -cpu host -M microvm -m 256 -smp 1 \
  -nodefaults -no-user-config -no-reboot -display none -serial stdio \
  -kernel "$LAB_CLOUD_KERNEL" -initrd "$work/report.cpio.gz" \
  -append "console=ttyS0 quiet" </dev/null >"$work/serial.log" 2>&1 || rc=$?
t1=${EPOCHREALTIME//[!0-9]/}
ms=$(((t1 - t0) / 1000))
tr -d '\r' <"$work/serial.log" | sed 's/^/  L2| /'

if grep -q 'CLONE-INIT-DONE' "$work/serial.log"; then
  pass "QEMU -accel kvm -M microvm booted $LAB_CLOUD_VERSION to CLONE-INIT-DONE in ${ms} ms (qemu exit $rc)"
else
  fail "no CLONE-INIT-DONE from the microvm guest (qemu exit $rc after ${ms} ms)"
fi
report=$(tr -d '\r' <"$work/serial.log" | grep -m1 '^CLONE-REPORT ' || true)
if [[ $report =~ nproc=1\ memtotal_kb=([0-9]+)\ time=([0-9]+)\ acpi_errors=([0-9]+)\ madt_cpus=([0-9]+) ]] &&
  ((BASH_REMATCH[1] > 100000 && BASH_REMATCH[3] == 0)); then
  pass "CLONE-REPORT is sane: ${report#CLONE-REPORT }"
else
  fail "CLONE-REPORT missing or unexpected: '${report:-<none>}'"
fi
if ((rc == 0)); then
  pass "the guest powered off and QEMU exited 0"
else
  fail "QEMU exited $rc (124 = timeout)"
fi
finish
