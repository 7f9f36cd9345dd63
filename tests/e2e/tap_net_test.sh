#!/usr/bin/env bash
# virtio-net over a TAP end to end with a stock kernel, once with vhost-net and once with the
# userspace data path: the guest's MAC and negotiated offloads, ping both ways, a TCP transfer from
# L1 to the guest (md5 checked) and one from the guest to L1 (bytes counted, throughput printed);
# a TAP that does not exist is a clear error.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local mods=$LAB_GENERIC_MODULES/kernel
  e2e_initrd "$E2E_WORK/net.cpio.gz" "$E2E_ROOT/tests/guest/init-net.sh" \
    "$mods/drivers/virtio/virtio_ring.ko:/modules/" "$mods/drivers/virtio/virtio.ko:/modules/" \
    "$mods/drivers/virtio/virtio_mmio.ko:/modules/" "$mods/net/core/failover.ko:/modules/" \
    "$mods/drivers/net/net_failover.ko:/modules/" "$mods/drivers/net/virtio_net.ko:/modules/"
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-net
rm -rf "$w"
mkdir -p "$w"
tx_mib=${NET_TX_MIB:-8}  # TCG: ~350 KiB/s; bench/net measures throughput
mac=52:54:00:00:77:02

wait_for() { # wait_for FILE PATTERN SECONDS
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    grep -aq "$2" "$1" 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}
field() { grep -a "CLONE-NET $2=" "$1" | tr -d '\r' | head -1 | sed "s/^.*CLONE-NET $2=//"; }

[[ -c /dev/net/tun ]] || modprobe tun
[[ -c /dev/vhost-net ]] || modprobe vhost_net
ip link del ctap0 2>/dev/null || true
trap 'ip link del ctap0 2>/dev/null || true' EXIT
ip tuntap add dev ctap0 mode tap
ip addr add 10.0.77.1/24 dev ctap0
ip link set ctap0 up
head -c $((4 << 20)) /dev/urandom >"$w/blob"
want=$(md5sum <"$w/blob" | cut -d' ' -f1)

for mode in on off; do
  out=$w/net-$mode.txt
  rm -f "$w/rx-$mode"
  socat -u TCP-LISTEN:7001,reuseaddr \
    SYSTEM:"s=\$(date +%s%N); n=\$(wc -c); e=\$(date +%s%N); echo \$n \$s \$e >$w/rx-$mode" &
  listener=$!
  "$CLONE_BIN" run --kernel "$LAB_GENERIC_KERNEL" --initrd "$E2E_WORK/net.cpio.gz" --mem-mb 256 \
    --tap "ctap0,mac=$mac,vhost=$mode" --cmdline "console=ttyS0 quiet panic=-1 clone.tx_mib=$tx_mib" \
    </dev/null >"$out" 2>"$out.err" &
  pid=$!
  (sleep 400; kill -TERM $pid 2>/dev/null) &
  watchdog=$!
  ping_guest=fail
  if wait_for "$out" "CLONE-NET ready" 300; then
    if busybox ping -c 3 -W 5 10.0.77.2 >/dev/null 2>&1; then ping_guest=ok; fi
    vhost_fds=$(ls -l /proc/$pid/fd 2>/dev/null | grep -c /dev/vhost-net || true)
    for _ in $(seq 20); do socat -u FILE:"$w/blob" TCP:10.0.77.2:7002 2>/dev/null && break; sleep 1; done
  fi
  status=0
  wait $pid || status=$?
  kill $watchdog $listener 2>/dev/null || true
  grep -a "CLONE-NET" "$out" | tr -d '\r' | sed 's/^/    /'
  if [[ $status != 0 ]]; then tail -20 "$out"; cat "$out.err"; fi
  features=$(field "$out" features)
  check "vhost=$mode: guest powered off (exit 0)" test "$status" = 0
  if [[ $mode == on ]]; then
    check "vhost=on: /dev/vhost-net is open in the VMM" test "${vhost_fds:-0}" -ge 1
  else
    check "vhost=off: no /dev/vhost-net (userspace data path)" test "${vhost_fds:-1}" = 0
  fi
  check "vhost=$mode: MAC from --tap" test "$(field "$out" mac)" = "$mac"
  # features: virtio's feature bitstring, bit 0 first
  check "vhost=$mode: negotiated CSUM, GUEST_CSUM, MAC, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF, STATUS" \
    bash -c "f=$features; for b in 0 1 5 7 8 11 12 15 16; do [[ \${f:\$b:1} == 1 ]] || exit 1; done"
  check "vhost=$mode: guest pings L1" test "$(field "$out" ping-host)" = ok
  check "vhost=$mode: L1 pings the guest" test "$ping_guest" = ok
  check "vhost=$mode: L1 -> guest TCP transfer intact (4 MiB, md5)" test "$(field "$out" recv-md5)" = "$want"
  check "vhost=$mode: guest -> L1 TCP transfer done" test "$(field "$out" tx)" = done
  read -r bytes start end <"$w/rx-$mode" 2>/dev/null || bytes=0
  check "vhost=$mode: L1 received $tx_mib MiB" test "${bytes:-0}" = $((tx_mib << 20))
  if [[ ${bytes:-0} -gt 0 ]]; then
    echo "    guest -> L1 throughput, vhost=$mode: $((bytes * 1000000000 / (end - start) / 1024)) KiB/s" \
      "($bytes bytes in $(((end - start) / 1000000)) ms)"
  fi
done

status=0
"$CLONE_BIN" run --kernel "$LAB_GENERIC_KERNEL" --initrd "$E2E_WORK/net.cpio.gz" --tap clone-missing0 \
  </dev/null >"$w/missing.txt" 2>&1 || status=$?
sed 's/^/    /' "$w/missing.txt"
check "missing TAP: clone exits 1" test "$status" = 1
check "missing TAP: a clear error" grep -q "TAP clone-missing0 does not exist: create it with" "$w/missing.txt"

ip link del ctap0 2>/dev/null || true
rm -rf "$w"
e2e_finish
