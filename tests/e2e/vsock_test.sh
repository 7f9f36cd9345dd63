#!/usr/bin/env bash
# virtio-vsock end to end with a stock kernel over vhost-vsock: a message each way between L1 (socat)
# and the guest (tests/guest/vsock-test.c), the CID the guest sees, a taken --cid refused with a
# clear error, and automatic CIDs for two VMs running at once.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local mods=$LAB_GENERIC_MODULES/kernel
  gcc -static -O2 -Wall -Wextra -o "$E2E_WORK/vsock-test" "$E2E_ROOT/tests/guest/vsock-test.c"
  e2e_initrd "$E2E_WORK/vsock.cpio.gz" "$E2E_ROOT/tests/guest/init-vsock.sh" \
    "$E2E_WORK/vsock-test:/vsock-test" \
    "$mods/drivers/virtio/virtio_ring.ko:/modules/" "$mods/drivers/virtio/virtio.ko:/modules/" \
    "$mods/drivers/virtio/virtio_mmio.ko:/modules/" "$mods/net/vmw_vsock/vsock.ko:/modules/" \
    "$mods/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko:/modules/" \
    "$mods/net/vmw_vsock/vmw_vsock_virtio_transport.ko:/modules/"
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-vsock
rm -rf "$w"
mkdir -p "$w"
initrd=$E2E_WORK/vsock.cpio.gz

clone_bg() { # clone_bg OUT ACTION [ARGS...]: starts a VM in the background, sets $pid
  local out=$1 action=$2
  shift 2
  timeout 300 "$CLONE_BIN" run --kernel "$LAB_GENERIC_KERNEL" --initrd "$initrd" --mem-mb 256 \
    --cmdline "console=ttyS0 quiet panic=-1 clone.vsock=$action" "$@" </dev/null >"$out" 2>"$out.err" &
  pid=$!
}
wait_for() { # wait_for FILE PATTERN SECONDS
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    grep -aq "$2" "$1" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
field() { grep -a "CLONE-VSOCK $2=" "$1" | tr -d '\r' | head -1 | sed "s/^.*CLONE-VSOCK $2=//"; }
show() { grep -a "CLONE-VSOCK" "$1" | tr -d '\r' | sed 's/^/    /'; }

[[ -c /dev/vhost-vsock ]] || modprobe vhost_vsock

# 1. A message each way, with an explicit CID.
socat -T 120 VSOCK-LISTEN:5000 SYSTEM:'read l; echo "$l" >'"$w"'/host-got; echo pong-from-host' &
listener=$!
out=$w/talk.txt
clone_bg "$out" talk --cid 42
if wait_for "$out" "CLONE-VSOCK listening" 180; then
  for _ in $(seq 30); do
    host_reply=$(echo ping-from-host | socat -T 10 - VSOCK-CONNECT:42:6000 2>/dev/null) && [[ -n $host_reply ]] && break
    sleep 1
  done
fi
status=0
wait $pid || status=$?
kill $listener 2>/dev/null || true
show "$out"
if [[ $status != 0 ]]; then tail -20 "$out"; cat "$out.err"; fi
check "talk: guest powered off (exit 0)" test "$status" = 0
check "talk: the guest's CID is --cid 42" test "$(field "$out" cid)" = 42
check "guest -> host: L1 received the guest's message" test "$(cat "$w/host-got" 2>/dev/null)" = ping-from-guest
check "guest -> host: the guest read L1's answer" test "$(field "$out" reply)" = pong-from-host
check "host -> guest: the guest received L1's message" test "$(field "$out" got)" = "GOT ping-from-host"
check "host -> guest: L1 read the guest's answer" test "${host_reply:-}" = pong-from-guest

# 2. Automatic CIDs for two VMs at once; a taken CID is refused.
a=$w/hold.txt
clone_bg "$a" hold
pid_a=$pid
wait_for "$a" "CLONE-VSOCK holding" 180 || true
cid_a=$(field "$a" cid)
show "$a"
status=0
timeout 30 "$CLONE_BIN" run --kernel "$LAB_GENERIC_KERNEL" --initrd "$initrd" --cid "$cid_a" \
  </dev/null >"$w/taken.txt" 2>&1 || status=$?
sed 's/^/    /' "$w/taken.txt"
check "taken CID: clone exits 1" test "$status" = 1
check "taken CID: a clear error" grep -q "vsock CID $cid_a is already used by another VM" "$w/taken.txt"
b=$w/second.txt
status=0
timeout 180 "$CLONE_BIN" run --kernel "$LAB_GENERIC_KERNEL" --initrd "$initrd" --mem-mb 256 \
  --cmdline "console=ttyS0 quiet panic=-1 clone.vsock=cid" </dev/null >"$b" 2>"$b.err" || status=$?
cid_b=$(field "$b" cid)
show "$b"
check "second VM: powered off" test "$status" = 0
check "auto CIDs: both valid (>= 3): $cid_a, $cid_b" test "${cid_a:-0}" -ge 3 -a "${cid_b:-0}" -ge 3
check "auto CIDs: distinct" test "${cid_a:-x}" != "${cid_b:-x}"
kill -TERM "$pid_a" 2>/dev/null || true
status=0
wait "$pid_a" || status=$?
check "first VM: stopped by SIGTERM (143)" test "$status" = 143

rm -rf "$w"
e2e_finish
