#!/usr/bin/env bash
# --net end to end with a stock kernel (Debian cloud): Clone creates the bridge, a TAP per VM, NAT
# and a lease; the guest configures eth0 from its MAC (06:00 + IPv4 address, no DHCP, no agent),
# reaches the gateway, reaches an "internet" network namespace that has NO route back to the VM
# subnet (so replies arrive only through the masquerade), and two VMs reach each other. While a
# VM runs its TAP is on the bridge; after it exits the TAP and the lease are gone and the shared
# bridge and NAT stay. Without CAP_NET_ADMIN, --net fails with a message that says what to do.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio virtio_net
  cat >"$E2E_WORK/init" <<'INIT'
#!/bin/sh
# /init of the net_auto guest: clone.peer=IP (another guest to ping, or "none"), clone.tcp=1 (send
# a line to 10.99.0.2:5000), clone.linger=S (seconds to stay up afterwards so a peer can reach
# us). Reports "CLONE-NET ..." lines.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "CLONE-NET insmod $m failed"; done
for _ in $(seq 1 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
peer=none linger=0 tcp=0
for p in $(cat /proc/cmdline); do
  case $p in clone.peer=*) peer=${p#clone.peer=} ;; clone.linger=*) linger=${p#clone.linger=} ;; clone.tcp=*) tcp=${p#clone.tcp=} ;; esac
done
mac=$(cat /sys/class/net/eth0/address)
set -- $(echo "$mac" | tr ':' ' ')
ip=$((0x$3)).$((0x$4)).$((0x$5)).$((0x$6))
gw=$((0x$3)).$((0x$4)).$((0x$5)).1
ip link set lo up
ip link set eth0 up
ip addr add "$ip/24" dev eth0
ip route add default via "$gw"
echo "CLONE-NET mac=$mac ip=$ip gw=$gw"
result() { if "$@" >/dev/null 2>&1; then echo ok; else echo fail; fi; }
echo "CLONE-NET gateway=$(result ping -c 2 -W 3 "$gw")"
echo "CLONE-NET nat-ping=$(result ping -c 2 -W 3 10.99.0.2)"
if [ "$tcp" = 1 ]; then echo "CLONE-NET nat-tcp=$(result sh -c "echo hello-from-$ip | nc -w 5 10.99.0.2 5000")"; fi
if [ "$peer" != none ]; then
  ok=fail
  for _ in $(seq 1 60); do if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then ok=ok; break; fi; done
  echo "CLONE-NET peer=$ok"
fi
sleep "$linger"
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
INIT
  chmod +x "$E2E_WORK/init"
  e2e_initrd "$E2E_WORK/net.cpio.gz" "$E2E_WORK/init" "$E2E_WORK/modules:/modules"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-net-rt  # leases on L1's tmpfs
w=/tmp/clone-e2e-net
rm -rf "$w" "$CLONE_RUNTIME_DIR"
mkdir -p "$w"
busybox=$(command -v busybox)

# The "internet": a namespace behind a veth pair, with no route to 172.30.0.0/24.
ip netns add wan
ip link add up0 type veth peer name wan0
ip link set wan0 netns wan
ip addr add 10.99.0.1/24 dev up0
ip link set up0 up
ip -n wan addr add 10.99.0.2/24 dev wan0
ip -n wan link set wan0 up
ip -n wan link set lo up
ip netns exec wan "$busybox" nc -l -p 5000 >"$w/received" &
sink=$!

vm() { # vm NAME CMDLINE-EXTRA [clone args...]
  local name=$1 extra=$2
  shift 2
  timeout 240 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/net.cpio.gz" --mem-mb 192 \
    --cmdline "console=ttyS0 quiet panic=-1 $extra" --net "$@" </dev/null >"$w/$name.out" 2>"$w/$name.err"
}
show() { grep -a "CLONE-NET" "$w/$1.out" | tr -d '\r' | sed "s/^/    [$1] /"; }
ports() { { ip -br link show master clonebr0 2>/dev/null || true; } | awk '{print $1}' | sort | tr '\n' ' '; }  # no bridge yet: none
leases() { find "$CLONE_RUNTIME_DIR/net/clonebr0" -maxdepth 1 -name '172.*' 2>/dev/null | wc -l; }

# One VM: watch the bridge while it runs.
vm one "clone.peer=none clone.tcp=1 clone.linger=2" &
pid=$!
seen=
for _ in $(seq 1 600); do
  p=$(ports)
  if [[ -n $p ]]; then seen=$p; break; fi
  sleep 0.1
done
status=0
wait "$pid" || status=$?
show one
if [[ $status != 0 ]]; then tail -5 "$w/one.out"; cat "$w/one.err"; fi
check "one VM: clone run --net exits 0" test "$status" = 0
check "one VM: its TAP was on clonebr0 while it ran ($seen)" grep -q "^clone" <<<"$seen"
check "one VM: the guest got 172.30.0.2 and the MAC derived from it" \
  grep -q "mac=06:00:ac:1e:00:02 ip=172.30.0.2 gw=172.30.0.1" "$w/one.out"
check "one VM: pings its gateway (the bridge)" grep -q "gateway=ok" "$w/one.out"
check "one VM: reaches a network with no route back (masquerade)" grep -q "nat-ping=ok" "$w/one.out"
check "one VM: TCP through NAT delivered its bytes" grep -q "hello-from-172.30.0.2" "$w/received"
check "one VM: conntrack shows the NAT to 10.99.0.1" grep -q "src=172.30.0.2 dst=10.99.0.2 .*dst=10.99.0.1" /proc/net/nf_conntrack
for _ in $(seq 1 20); do [[ -z $(ports) ]] && break; sleep 0.1; done
check "after exit: the TAP is gone" test -z "$(ports)"
check "after exit: the lease is released" test "$(leases)" = 0
check "after exit: the shared bridge stays" test -e /sys/class/net/clonebr0
check "after exit: the NAT rules stay" sh -c "nft list table ip clone | grep -q masquerade"
kill "$sink" 2>/dev/null || true

# Two VMs at once: distinct addresses, and they reach each other over the bridge.
vm a "clone.peer=172.30.0.3 clone.linger=20" &
a=$!
sleep 1
vm b "clone.peer=172.30.0.2 clone.linger=5" &
b=$!
sa=0 sb=0
wait "$a" || sa=$?
wait "$b" || sb=$?
show a
show b
check "two VMs: both exit 0" test "$sa/$sb" = 0/0
check "two VMs: the first got 172.30.0.2" grep -q "ip=172.30.0.2" "$w/a.out"
check "two VMs: the second got 172.30.0.3 (06:00:ac:1e:00:03)" grep -q "mac=06:00:ac:1e:00:03 ip=172.30.0.3" "$w/b.out"
check "two VMs: a reaches b" grep -q "peer=ok" "$w/a.out"
check "two VMs: b reaches a" grep -q "peer=ok" "$w/b.out"
for _ in $(seq 1 20); do [[ -z $(ports) ]] && break; sleep 0.1; done
check "two VMs: no TAP or lease left" test "$(ports)/$(leases)" = "/0"

# Without privileges: a clear error and nothing created. (Copies, so that user can read them.)
links_before=$(ip -br link | wc -l)
cp "$CLONE_BIN" "$LAB_CLOUD_KERNEL" "$E2E_WORK/net.cpio.gz" "$w/"
chmod a+rx "$w" "$w"/*
status=0
setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
  "$w/clone" run --kernel "$w/$(basename "$LAB_CLOUD_KERNEL")" --initrd "$w/net.cpio.gz" --net \
  </dev/null >"$w/user.out" 2>"$w/user.err" || status=$?
sed 's/^/    [user] /' "$w/user.err"
check "unprivileged: --net fails with status 1" test "$status" = 1
check "unprivileged: the error names CAP_NET_ADMIN and --tap" grep -q "CAP_NET_ADMIN.*--tap NAME" "$w/user.err"
check "unprivileged: no link was created" test "$(ip -br link | wc -l)" = "$links_before"

ip netns del wan
ip link del clonebr0 2>/dev/null || true
rm -rf "$w" "$CLONE_RUNTIME_DIR"
e2e_finish
