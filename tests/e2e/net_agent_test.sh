#!/usr/bin/env bash
# `clone run --net` with the guest agent: the VMM leases an address, the agent applies it (MAC,
# address, default route) — no DHCP, nothing in the guest's own scripts — and the guest then talks
# to the host by ping and TCP both ways.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtio_net
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-netagent-rt
rm -rf "$CLONE_RUNTIME_DIR"
id=$("$CLONE_BIN" run -d --net --name n1 --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" \
  --mem-mb 256 --cmdline "console=ttyS0 quiet panic=-1" 2>"$E2E_WORK/run.err") || true
check "run -d --net started" test "$id" = n1
cat "$E2E_WORK/run.err"
info=$CLONE_RUNTIME_DIR/vms/n1/info.json
ip=$(sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' "$info")
mac=$(sed -n 's/.*"mac": "\([0-9a-f:]*\)".*/\1/p' "$info")
echo "leased ip=$ip mac=$mac"
check "a leased address in 172.30.0.0/24" grep -q '^172\.30\.0\.' <<<"$ip"
addr=''
for _ in $(seq 1 240); do
  addr=$("$CLONE_BIN" exec -- ip -4 addr show eth0 2>/dev/null) && grep -q "$ip/24" <<<"$addr" && break
  sleep 0.5
done
echo "$addr"
check "the agent applied the leased address" grep -q "inet $ip/24" <<<"$addr"
check "the agent applied the MAC" bash -c "'$CLONE_BIN' exec -- cat /sys/class/net/eth0/address | grep -qx '$mac'"
check "guest -> host ping (gateway)" "$CLONE_BIN" exec -- ping -c 2 -W 3 172.30.0.1
check "host -> guest ping" busybox ping -c 2 -W 3 "$ip"
check "default route via the bridge" bash -c "'$CLONE_BIN' exec -- ip route | grep -q 'default via 172.30.0.1'"
# TCP both ways (busybox nc in the guest, socat on the host).
rm -f "$E2E_WORK/tcp.in"
socat -u TCP-LISTEN:5001,reuseaddr OPEN:"$E2E_WORK/tcp.in",creat &
listener=$!
sleep 0.5
"$CLONE_BIN" exec -- sh -c 'echo tcp-from-guest | nc -w 3 172.30.0.1 5001' || true
wait "$listener" 2>/dev/null || true
check "guest -> host TCP" grep -qx tcp-from-guest "$E2E_WORK/tcp.in"
"$CLONE_BIN" exec -- sh -c 'nc -l -p 5002 > /tmp/tcp.in' &
sleep 2
echo tcp-from-host | socat -u - TCP:"$ip":5002,retry=5 || true
sleep 1
check "host -> guest TCP" bash -c "'$CLONE_BIN' exec -- cat /tmp/tcp.in | grep -qx tcp-from-host"
tap=$(sed -n 's/.*"tap": "\([a-z0-9]*\)".*/\1/p' "$info")
check "the VM's TAP is on the bridge" bash -c "ip link show '$tap' | grep -q 'master clonebr0'"
curl -s --unix-socket "$CLONE_RUNTIME_DIR/vms/n1/control.sock" -X PUT -H 'Content-Type: application/json' \
  -d '{"mode":"force"}' http://localhost/vm/shutdown >/dev/null || true
for _ in $(seq 1 30); do [[ -z $(ls "$CLONE_RUNTIME_DIR/vms" 2>/dev/null) ]] && break; sleep 0.5; done
check "after exit the TAP is gone" bash -c "! ip link show '$tap' >/dev/null 2>&1"
e2e_finish
