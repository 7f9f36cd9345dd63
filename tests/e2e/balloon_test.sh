#!/usr/bin/env bash
# virtio-balloon end to end (issue #12, docs/density.md), one lab boot: a stock Debian kernel finds
# Clone's balloon through the DSDT and binds virtio_balloon; then
#   1. free page reporting: a 512 MiB guest fills 300 MiB of tmpfs and frees it; with no agent
#      command, no policy and no target, the VMM process's RSS (measured here, on the L1 host)
#      returns to within 40 MiB of what it was before the fill;
#   2. inflating with `clone balloon --target 160M` (a guest without free page reporting, holding
#      300 MiB it freed) lowers the VMM's RSS by most of that and the guest sees the memory gone;
#   3. deflating (`--target 512M`) gives it back: the guest allocates 300 MiB again;
#   4. a snapshot of the ballooned VM forks with the balloon intact (GET /vm of the fork);
#   5. --balloon auto with compressed times: the agent's idle reports inflate the guest down to the
#      floor (128 MiB: a busybox guest cannot give much more), an exec (activity) deflates it at once.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtio_balloon
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
E2E_TIMEOUT=${E2E_TIMEOUT:-900}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-balloon-rt
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-balloon-templates
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR"
initrd=$E2E_WORK/agent.cpio.gz

run_vm() { # run_vm NAME [clone run flags...]
  local name=$1
  shift
  "$CLONE_BIN" run -d --name "$name" --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb 512 \
    --cmdline "console=ttyS0 quiet panic=-1" "$@" 2>"$E2E_WORK/$name.run.err"
}
rss_mib() { awk '/^VmRSS:/ {printf "%d", $2 / 1024}' "/proc/$(pid_of "$1")/status"; }
vm_json() { curl -s --max-time 10 --unix-socket "$CLONE_RUNTIME_DIR/vms/$1/control.sock" http://localhost/vm; }
# balloon_field NAME KEY: a number from GET /vm's "balloon" object.
balloon_field() {
  vm_json "$1" | python3 -c 'import json, sys; b = json.load(sys.stdin).get("balloon") or {}; v = b.get(sys.argv[1]); print("" if v is None else v)' "$2" 2>/dev/null
}
guest() { "$CLONE_BIN" exec --vm-id "$1" --timeout 120 -- sh -c "$2"; }
# Waits up to $2 seconds for "balloon.actual_mib" of VM $1 to come within 8 MiB of $3.
wait_actual() {
  local a
  for _ in $(seq 1 "$2"); do
    a=$(balloon_field "$1" actual_mib)
    [[ -n $a ]] && awk -v a="$a" -v t="$3" 'BEGIN{exit !(a - t < 8 && t - a < 8)}' && return 0
    sleep 1
  done
  echo "balloon actual_mib ${a:-?}, wanted $3"
  return 1
}
# Waits up to $2 seconds for VM $1's RSS to drop to $3 MiB or below.
wait_rss_below() {
  for _ in $(seq 1 "$2"); do
    (($(rss_mib "$1") <= $3)) && return 0
    sleep 1
  done
  return 1
}
fill='mkdir -p /fill && mount -t tmpfs -o size=400m tmpfs /fill && dd if=/dev/zero of=/fill/f bs=1M count=300 2>/dev/null && sync'
free='rm -f /fill/f && umount /fill'

# --- 1. free page reporting ---
id=$(run_vm fpr) || true
check "VM with a balloon (the default) started" test "$id" = fpr
check "agent answers" wait_agent fpr
[[ $id == fpr ]] || cat "$E2E_WORK/fpr.run.err"
check "the guest bound virtio_balloon to Clone's device (virtio id 5)" \
  guest fpr 'grep -l "^0x0005$" /sys/bus/virtio/devices/*/device && ls -d /sys/bus/virtio/drivers/virtio_balloon/virtio*'
check "GET /vm: the balloon's driver is ready" test "$(balloon_field fpr driver_ok)" = True
check "GET /vm: free page reporting negotiated" test "$(balloon_field fpr free_page_reporting)" = True
sleep 4  # the guest reports what boot freed (page_reporting runs 2 s after frees)
before=$(rss_mib fpr)
guest fpr "$fill" || fail "fill 300 MiB of tmpfs"
filled=$(rss_mib fpr)
guest fpr "$free" || fail "free the 300 MiB"
returned=0
wait_rss_below fpr 60 $((before + 40)) && returned=1
after=$(rss_mib fpr)
reported=$(balloon_field fpr reported_mib)
echo "free page reporting: VMM RSS ${before} MiB idle, ${filled} MiB with 300 MiB filled, ${after} MiB after the free (guest reported ${reported:-?} MiB)"
check "the fill shows in the VMM's RSS (+250 MiB or more)" test $((filled - before)) -ge 250
check "after the free, RSS is back within 40 MiB of before ($after vs $before MiB)" test "$returned" = 1
stats=$(balloon_field fpr stats)
echo "guest statistics: $stats"
check "stats queue: GET /vm has the guest's available memory" grep -q available_memory <<<"$stats"
stop_vm fpr || fail "fpr stops"

# --- 2. inflate, 3. deflate: a guest whose freed pages stay with it ---
id=$(run_vm bal --no-free-page-reporting) || true
check "VM with --no-free-page-reporting started" test "$id" = bal
check "agent answers" wait_agent bal
guest bal "$fill && $free" || fail "fill and free 300 MiB"
held=$(rss_mib bal)
avail_full=$(guest bal "awk '/MemAvailable/ {print int(\$2/1024)}' /proc/meminfo") || true
out=$("$CLONE_BIN" balloon --vm-id bal --target 160M 2>&1) || fail "clone balloon --target 160M: $out"
echo "$out"
check "inflate: the balloon reaches the target (guest keeps ~160 MiB)" wait_actual bal 120 160
inflated=$(rss_mib bal)
avail_inflated=$(guest bal "awk '/MemAvailable/ {print int(\$2/1024)}' /proc/meminfo") || true
echo "inflate: VMM RSS ${held} MiB -> ${inflated} MiB; guest MemAvailable ${avail_full} -> ${avail_inflated} MiB"
check "inflate lowers the VMM's RSS by 150 MiB or more" test $((held - inflated)) -ge 150
check "inflate: the guest's available memory is gone (< 150 MiB)" test "${avail_inflated:-999}" -lt 150
check "GET /vm: inflated_mib ~352" bash -c "awk -v i='$(balloon_field bal inflated_mib)' 'BEGIN{exit !(i > 340 && i < 360)}'"

# --- 4. snapshot + fork of the ballooned VM ---
"$CLONE_BIN" snapshot --vm-id bal --name ballooned >"$E2E_WORK/snap.out" 2>&1 || { fail "snapshot"; cat "$E2E_WORK/snap.out"; }
fork=$("$CLONE_BIN" fork --template ballooned -d --name bf 2>"$E2E_WORK/fork.err") || true
check "fork of the ballooned template started" test "$fork" = bf
[[ $fork == bf ]] || cat "$E2E_WORK/fork.err"
check "fork answers" wait_agent bf 120
check "fork: the balloon is intact (inflated_mib > 340)" \
  bash -c "awk -v i='$(balloon_field bf inflated_mib)' 'BEGIN{exit !(i > 340)}'"
stop_vm bf || fail "bf stops"

out=$("$CLONE_BIN" balloon --vm-id bal --target 512M 2>&1) || fail "clone balloon --target 512M: $out"
check "deflate: the guest gets its memory back" wait_actual bal 120 512
check "deflate: the guest allocates 300 MiB again" guest bal "$fill"
avail_after=$(guest bal "awk '/MemAvailable/ {print int(\$2/1024)}' /proc/meminfo") || true
echo "deflate: guest MemAvailable with 300 MiB filled: ${avail_after} MiB; VMM RSS $(rss_mib bal) MiB"
out=$("$CLONE_BIN" balloon --vm-id bal --target 600M 2>&1) && fail "a target above RAM is refused"
check "a target above the guest's RAM is refused with one line" grep -q "target_mib" <<<"$out"
stop_vm bal || fail "bal stops"
echo "sections 1-4: ${SECONDS} s"

# --- 5. the policy: idle -> floor, active -> deflated ---
id=$(run_vm auto --balloon auto --balloon-floor 128M --balloon-times 2s,4s,6s,4s,8s) || true
check "VM with --balloon auto started" test "$id" = auto
check "agent answers" wait_agent auto
# Only GET /vm from here on: every exec is activity. The policy inflates only while the agent
# reports the guest idle (CPU < 5 % of one CPU), which a guest under TCG may not be.
report() { vm_json auto | python3 -c 'import json, sys; j = json.load(sys.stdin); r = j["agent"].get("report", {}); b = j.get("balloon") or {}; print("active=%s cpu_busy=%.3f target_mib=%s actual_mib=%s" % (r.get("active"), r.get("cpu_busy", -1), b.get("target_mib"), b.get("actual_mib")))' 2>/dev/null; }
floor_reached=0
for i in $(seq 1 60); do
  a=$(balloon_field auto actual_mib)
  [[ -n $a ]] && awk -v a="$a" 'BEGIN{exit !(a < 136)}' && { floor_reached=1; break; }
  ((i % 5 == 0)) && echo "auto after ${i} s: $(report)"
  sleep 1
done
check "idle: the policy inflates the guest down to the 128 MiB floor" test "$floor_reached" = 1
echo "auto at the floor: VMM RSS $(rss_mib auto) MiB, balloon $(balloon_field auto balloon_mib) MiB"
"$CLONE_BIN" exec --vm-id auto --timeout 60 -- sleep 10 >/dev/null 2>&1 &
deflated=0
for _ in $(seq 1 20); do
  t=$(balloon_field auto target_mib)
  [[ -n $t ]] && awk -v t="$t" 'BEGIN{exit !(t >= 511)}' && { deflated=1; break; }
  sleep 0.5
done
check "active (an exec runs): the policy deflates at once" test "$deflated" = 1
wait
stop_vm auto || fail "auto stops"
echo "total: ${SECONDS} s"
e2e_finish
