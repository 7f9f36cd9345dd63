#!/usr/bin/env bash
# --seccomp end to end: a VM with every device kind (virtio-vsock + agent, virtio-blk, virtio-net
# via --net, virtio-rng) runs confined; exec, the console, the disk, the network, snapshot, fork
# (explicit --seccomp and inherited from the template) and status all work; every thread of each
# VM process is in seccomp filter mode with the filter count its role implies; SIGTERM ends it
# cleanly; and no thread ever reported a forbidden syscall. A VM without --seccomp is the control.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtio_net \
    virtio_blk virtio-rng
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-sec-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-sec-templates
w=/tmp/clone-e2e-sec
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR" "$w"
mkdir -p "$w"
truncate -s 32M "$w/disk.raw"
kernel_args=(--kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" --mem-mb 256)
cmdline="console=ttyS0 quiet panic=-1"

api_get() { curl -s --unix-socket "$CLONE_RUNTIME_DIR/vms/$1/control.sock" http://localhost/vm; }
api_has() { grep -q "$2" <<<"$(api_get "$1")"; }  # api_has ID PATTERN: GET /vm matches
# Foreground VM processes (stderr kept: a seccomp report would land there), in the background.
declare -A vm_pid=()
start_vm() { # start_vm ID COMMAND-ARGS...
  local id=$1
  shift
  "$CLONE_BIN" "$@" </dev/null >"$E2E_WORK/$id.console" 2>"$E2E_WORK/$id.err" &
  vm_pid[$id]=$!
}
wait_listed() { for _ in $(seq 1 120); do [[ -f $CLONE_RUNTIME_DIR/vms/$1/info.json ]] && return 0; sleep 0.5; done; return 1; }
# every_task_confined PID: Seccomp: 2 in every thread's status.
every_task_confined() {
  local t ok=0
  for t in /proc/"$1"/task/*; do
    grep -q '^Seccomp:[[:space:]]*2$' "$t/status" || { echo "    task ${t##*/}: $(grep '^Seccomp' "$t/status" | tr '\n' ' ')"; return 1; }
    ok=$((ok + 1))
  done
  ((ok > 0))
}
# filters PID: the Seccomp_filters counts of its threads, main thread first ("1 2 1" = vmm, vcpu, worker).
filters() {
  local t
  echo -n "$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' /proc/"$1"/status)"
  for t in /proc/"$1"/task/*; do
    [[ ${t##*/} == "$1" ]] && continue
    echo -n " $(sed -n 's/^Seccomp_filters:[[:space:]]*//p' "$t/status")"
  done
  echo
}
stop_with_sigterm() { # stop_with_sigterm ID: sets $status to the VM process's exit status
  status=0
  kill -TERM "${vm_pid[$1]}" || true
  wait "${vm_pid[$1]}" || status=$?
}
no_report() { ! grep -a 'seccomp:' "$E2E_WORK/$1.err"; }

# --- the control: no --seccomp ---
start_vm plain run --name plain "${kernel_args[@]}" --cmdline "$cmdline clone.noagent"
check "control VM (no --seccomp) started" wait_listed plain
sleep 1
pid=$(pid_of plain)
check "control VM: threads not in seccomp mode (Seccomp: 0)" grep -q '^Seccomp:[[:space:]]*0$' "/proc/$pid/status"
check "control VM: GET /vm says seccomp false" api_has plain '"seccomp":false'
stop_with_sigterm plain
check "control VM: SIGTERM -> exit status 143" test "$status" = 143

# --- the template VM, confined, with every device ---
start_vm s1 run --seccomp --net --name s1 "${kernel_args[@]}" --block "$w/disk.raw" --cmdline "$cmdline"
check "confined VM started" wait_listed s1
t0=$(now)
if ! wait_agent s1 120; then
  fail "confined VM: the agent answers (vsock, worker threads)"
  cat "$E2E_WORK/s1.err"; tail -20 "$E2E_WORK/s1.console"
  stop_with_sigterm s1
  e2e_finish
fi
pass "confined VM: the agent answers (vsock, worker threads) after $(since "$t0") s"
pid=$(pid_of s1)
echo "s1 threads' Seccomp_filters (main first): $(filters "$pid")"
check "confined VM: every thread in seccomp filter mode (Seccomp: 2)" every_task_confined "$pid"
f=$(filters "$pid")
check "confined VM: main thread has 1 filter (vmm)" test "${f%% *}" = 1
check "confined VM: a thread with 2 stacked filters (vcpu on vmm)" grep -qw 2 <<<"${f#* }"
check "confined VM: a thread with 1 filter of its own (agent link: worker)" grep -qw 1 <<<"${f#* }"
check "GET /vm: seccomp true" api_has s1 '"seccomp":true'
check "info.json: seccomp true" grep -q '"seccomp": *true' "$CLONE_RUNTIME_DIR/vms/s1/info.json"
out=$("$CLONE_BIN" exec --vm-id s1 -- uname -r) || true
check "exec uname -r" test "$out" = "$(basename "$LAB_CLOUD_MODULES")"
out=$("$CLONE_BIN" exec --vm-id s1 -- sh -c 'head -c 1048576 /dev/urandom > /tmp/p; dd if=/tmp/p of=/dev/vda bs=64k conv=fsync 2>/dev/null; md5sum < /tmp/p') || true
back=$("$CLONE_BIN" exec --vm-id s1 -- sh -c 'echo 3 > /proc/sys/vm/drop_caches; head -c 1048576 /dev/vda | md5sum') || true
host=$(head -c 1048576 "$w/disk.raw" | md5sum)
check "virtio-blk: 1 MiB written by the guest reads back, and reached the image" test -n "$out" -a "$out" = "$back" -a "$out" = "$host"
out=$("$CLONE_BIN" exec --vm-id s1 -- cat /sys/class/misc/hw_random/rng_current) || true
check "virtio-rng is the guest's hw_random" grep -q virtio_rng <<<"$out"
out=$("$CLONE_BIN" exec --vm-id s1 -- sh -c 'head -c 4096 /dev/hwrng | wc -c') || true
check "virtio-rng: 4 KiB from /dev/hwrng" test "$out" = 4096
ip=$(sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p' "$CLONE_RUNTIME_DIR/vms/s1/info.json")
for _ in $(seq 1 40); do busybox ping -c 1 -W 1 "$ip" >/dev/null 2>&1 && break; sleep 0.5; done
check "virtio-net: the host pings the guest at $ip" busybox ping -c 3 -W 2 "$ip"
out=$( (printf 'echo console-$((6*7))\n'; sleep 3) | timeout 6 socat - UNIX-CONNECT:"$CLONE_RUNTIME_DIR/vms/s1/console.sock" 2>/dev/null | tr -d '\r' | grep -a console-42 | head -1) || true
check "console socket: a command typed on the serial console answers" test "$out" = console-42
check "console output reached stdout (vCPU serial writes)" grep -aq CLONE-AGENT-READY "$E2E_WORK/s1.console"
"$CLONE_BIN" list >"$w/list.txt" 2>&1 || true
check "clone list shows s1" grep -q '^s1 ' "$w/list.txt"
"$CLONE_BIN" status --json >"$w/status.json" 2>&1 || true
check "clone status --json lists s1" grep -q '"s1"' "$w/status.json"
check "clone status --json reports seccomp true" grep -q '"seccomp": *true' "$w/status.json"

# --- snapshot (files written by the confined event loop) and forks ---
t0=$(now)
"$CLONE_BIN" snapshot --vm-id s1 --name tpl >"$w/snap.out" 2>&1 || true
echo "snapshot took $(since "$t0") s: $(cat "$w/snap.out")"
check "clone snapshot of the confined VM" test -f "$CLONE_TEMPLATES_DIR/tpl/memory" -a -f "$CLONE_TEMPLATES_DIR/tpl/state"
out=$("$CLONE_BIN" exec --vm-id s1 -- echo resumed) || true
check "the confined VM resumed after the snapshot" test "$out" = resumed

start_vm f1 fork --template tpl --seccomp --net --name f1
check "clone fork --seccomp started" wait_listed f1
check "fork f1: the agent answers" wait_agent f1 120
out=$("$CLONE_BIN" exec --vm-id f1 -- hostname) || true
check "fork f1: exec runs with the fork's identity" test "$out" = f1
fpid=$(pid_of f1)
echo "f1 threads' Seccomp_filters: $(filters "$fpid")"
check "fork f1: every thread confined" every_task_confined "$fpid"
check "fork f1: GET /vm seccomp true" api_has f1 '"seccomp":true'
out=$("$CLONE_BIN" exec --vm-id f1 -- sh -c 'head -c 1048576 /dev/vda | md5sum') || true
check "fork f1: its disk has the template's data" test "$out" = "$host"

start_vm f2 fork --template tpl --net --name f2
check "fork without --seccomp of a confined template started" wait_listed f2
check "fork f2: the agent answers" wait_agent f2 120
check "fork f2: confined too (inherited from the template)" every_task_confined "$(pid_of f2)"

# --- SIGTERM: clean ends, nothing reported ---
for id in f2 f1 s1; do
  stop_with_sigterm "$id"
  check "$id: SIGTERM -> exit status 143 (not 159, SIGSYS)" test "$status" = 143
  check "$id: runtime directory removed" test ! -e "$CLONE_RUNTIME_DIR/vms/$id"
  check "$id: no thread called a forbidden syscall" no_report "$id"
  if grep -aq 'seccomp:' "$E2E_WORK/$id.err"; then cat "$E2E_WORK/$id.err"; fi
done
check "no VM left" test "$(vm_count)" = 0
e2e_finish
