#!/usr/bin/env bash
# Copy-on-write fork end to end, on a real distro: a Debian bookworm rootfs (made by `clone rootfs
# create`, with the guest agent under systemd) boots with --net under a tmpfs overlay, becomes the
# template "warm" (`clone snapshot`), and `clone fork --count 20 --net` starts 20 VMs from it. Each
# fork must answer `clone exec` and be a distinct machine: unique hostname (its VM id), MAC, vsock
# CID and /etc/machine-id (rewritten by the agent), /dev/urandom output that differs (the agent
# credits fresh entropy and forces a CRNG reseed), and a clock within 1 s of the host's. Then: a
# fork of the running template VM (which keeps running and answering), a fork that fails at TAP
# creation leaves no process or file behind, a damaged template is refused, and every TAP is gone
# once the forks stop.
source "$(dirname "$0")/lib.sh"

e2e_prepare() { e2e_debian_image "$E2E_WORK/debian.img"; }
E2E_LAB_MEM=${E2E_LAB_MEM:-8192}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-fork-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-fork-templates
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR"
forks=${FORK_COUNT:-20}
clone_procs() { pgrep -c -x clone || true; }

# --- the template VM: Debian under a tmpfs overlay (its disk stays read-only), networked ---
t0=$(now)
tpl=$("$CLONE_BIN" run -d --name tpl --kernel "$LAB_CLOUD_KERNEL" --modules "$LAB_CLOUD_MODULES" \
  --rootfs "$E2E_WORK/debian.img" --overlay --net --mem-mb 256 \
  --cmdline "console=ttyS0 quiet panic=-1" 2>"$E2E_WORK/tpl.err") || true
check "template VM started" test "$tpl" = tpl
check "template agent answers (systemd started clone-agent)" wait_agent tpl
echo "template booted to its agent in $(since "$t0") s"
# A warm template is an idle one: let systemd finish starting units first (the agent's report of
# the guest's CPU use, in GET /vm, stays low), or every fork would go on booting — 20 busy guests
# on the lab's one emulated CPU.
idle=0
for _ in $(seq 1 120); do
  busy=$(curl -s --max-time 10 --unix-socket "$CLONE_RUNTIME_DIR/vms/tpl/control.sock" http://localhost/vm |
    sed -n 's/.*"cpu_busy": *\([0-9.e-]*\).*/\1/p') || true
  if [[ -n $busy ]] && awk -v b="$busy" 'BEGIN{exit !(b < 0.15)}'; then
    idle=$((idle + 1))
    ((idle >= 3)) && break
  else
    idle=0
  fi
  sleep 2
done
echo "template idle (guest CPU busy ${busy:-?}) $(since "$t0") s after launch"
"$CLONE_BIN" exec --vm-id tpl -- sh -c 'echo warm > /root/warm-marker' || true

t0=$(now)
out=$("$CLONE_BIN" snapshot --name warm 2>"$E2E_WORK/snap.err") || true
echo "snapshot: $out ($(since "$t0") s)"
check "clone snapshot of the networked Debian VM" test -f "$CLONE_TEMPLATES_DIR/warm/state"
[[ -f $CLONE_TEMPLATES_DIR/warm/state ]] || cat "$E2E_WORK/snap.err"
check "template VM still answers after the snapshot" "$CLONE_BIN" exec --vm-id tpl -- true

# --- N forks ---
t0=$(now)
"$CLONE_BIN" fork --template warm --count "$forks" --net --name f >"$E2E_WORK/ids" 2>"$E2E_WORK/fork.err" || true
echo "clone fork --count $forks: $(since "$t0") s"
mapfile -t ids <"$E2E_WORK/ids"
check "clone fork --count $forks printed $forks ids" test "${#ids[@]}" = "$forks"
[[ ${#ids[@]} == "$forks" ]] || cat "$E2E_WORK/fork.err"
: >"$E2E_WORK/facts"
answered=0 clock_ok=0 marker_ok=0
for id in "${ids[@]}"; do
  if ! wait_agent "$id" 120; then
    echo "fork $id: agent not answering"
    continue
  fi
  answered=$((answered + 1))
  before=$(now)
  facts=$("$CLONE_BIN" exec --vm-id "$id" -- sh -c \
    'echo "$(hostname) $(cat /sys/class/net/eth0/address) $(cat /etc/machine-id) $(head -c 64 /dev/urandom | od -An -tx1 | tr -d " \n") $(date +%s.%N) $(cat /root/warm-marker)"') || true
  after=$(now)
  cid=$(sed -n 's/.*"cid": *\([0-9]*\).*/\1/p' "$CLONE_RUNTIME_DIR/vms/$id/info.json" | head -1)
  echo "$id $cid $facts" >>"$E2E_WORK/facts"
  read -r _host _mac _mid _rand guest_time marker <<<"$facts"
  # The guest's clock, read between `before` and `after` on the host, is within 1 s of it.
  if awk -v g="${guest_time:-0}" -v b="$before" -v a="$after" 'BEGIN{exit !(g >= b - 1 && g <= a + 1)}'; then
    clock_ok=$((clock_ok + 1))
  else
    echo "fork $id: guest clock $guest_time, host $before .. $after"
  fi
  [[ $marker == warm ]] && marker_ok=$((marker_ok + 1))
done
cat "$E2E_WORK/facts"
uniq_col() { awk -v c="$1" '{print $c}' "$E2E_WORK/facts" | sort -u | grep -c .; }
check "every fork answers clone exec ($answered/$forks)" test "$answered" = "$forks"
check "every fork's hostname is its VM id" test "$(awk '$1 != $3' "$E2E_WORK/facts" | grep -c .)" = 0
check "hostnames are unique" test "$(uniq_col 3)" = "$forks"
check "MACs are unique" test "$(uniq_col 4)" = "$forks"
check "vsock CIDs are unique" test "$(uniq_col 2)" = "$forks"
check "machine-ids are unique" test "$(uniq_col 5)" = "$forks"
check "64 bytes of /dev/urandom differ across forks" test "$(uniq_col 6)" = "$forks"
check "every fork's clock is within 1 s of the host ($clock_ok/$forks)" test "$clock_ok" = "$forks"
check "every fork has the template's memory (marker file in its tmpfs overlay)" test "$marker_ok" = "$forks"
tpl_mid=$("$CLONE_BIN" exec --vm-id tpl -- cat /etc/machine-id) || true
check "the template kept its machine-id" test -n "$tpl_mid" -a "$(grep -c " $tpl_mid " "$E2E_WORK/facts")" = 0
"$CLONE_BIN" list >"$E2E_WORK/list" 2>&1 || true
head -5 "$E2E_WORK/list"

# --- memory: forks share the template's pages ---
pss_total=0
for id in "${ids[@]}"; do
  pid=$(pid_of "$id")
  [[ -n $pid ]] || continue
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
  pss_total=$((pss_total + pss))
done
echo "PSS of the $forks fork processes: $((pss_total / 1024)) MiB in total, $((pss_total / forks)) KiB per fork"

# --- a fork of the running template VM ---
t0=$(now)
live=$("$CLONE_BIN" fork --vm-id tpl -d --net --name live 2>"$E2E_WORK/live.err") || true
echo "fork of the running VM: $(since "$t0") s"
check "clone fork --vm-id tpl starts a fork" test "$live" = live
check "the fork of the running VM answers" wait_agent live 120
check "the fork of the running VM has its own hostname" test "$("$CLONE_BIN" exec --vm-id live -- hostname)" = live
check "the source keeps running and answers exec" "$CLONE_BIN" exec --vm-id tpl -- true
check "the temporary template is removed" test -z "$(ls "$CLONE_TEMPLATES_DIR" | grep -v '^warm$')"

# --- failures leave nothing behind ---
vms_before=$(vm_count) procs_before=$(clone_procs)
status=0
"$CLONE_BIN" fork --template warm -d --tap lo >"$E2E_WORK/badtap.out" 2>"$E2E_WORK/badtap.err" || status=$?
cat "$E2E_WORK/badtap.err"
check "a fork whose TAP cannot be created fails" test "$status" != 0
check "... with an error naming the TAP" grep -q "tap lo" "$E2E_WORK/badtap.err"
sleep 1
check "... and leaves no VM directory" test "$(vm_count)" = "$vms_before"
check "... and no process" test "$(clone_procs)" = "$procs_before"
"$CLONE_BIN" fork --template warm -d >"$E2E_WORK/nonet.out" 2>"$E2E_WORK/nonet.err" || true
check "a fork without the network the template has is refused" grep -q "network device" "$E2E_WORK/nonet.err"
check "... and leaves no VM directory" test "$(vm_count)" = "$vms_before"
cp -r "$CLONE_TEMPLATES_DIR/warm" "$CLONE_TEMPLATES_DIR/broken"
truncate -s 4096 "$CLONE_TEMPLATES_DIR/broken/state"
status=0
"$CLONE_BIN" fork --template broken -d --net >"$E2E_WORK/broken.out" 2>"$E2E_WORK/broken.err" || status=$?
cat "$E2E_WORK/broken.err"
check "a truncated template is refused with a clear error" grep -qi "broken" "$E2E_WORK/broken.err"
check "... before any VM starts" test "$status" != 0 -a "$(vm_count)" = "$vms_before"
"$CLONE_BIN" fork --template missing -d >/dev/null 2>"$E2E_WORK/missing.err" || true
check "a missing template is refused" grep -q "missing" "$E2E_WORK/missing.err"

# --- stop everything: no TAP, lease or directory is left ---
for id in "${ids[@]}" live tpl; do stop_vm "$id" || echo "VM $id did not stop"; done
check "every VM directory is gone" test "$(vm_count)" = 0
check "no clone TAP is left" test -z "$(ip -o link show type tun 2>/dev/null | grep clone)"
e2e_finish
