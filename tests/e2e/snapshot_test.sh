#!/usr/bin/env bash
# Snapshots end to end: a stock Debian kernel with the guest agent boots, gets a marker file,
# `clone snapshot` saves it (sparse memory, CRC-checked state), the source stops, and
# `clone restore` continues the same guest in a new VM process: the marker is there, uptime went
# on from where it was, the agent answers. The guest has 2 vCPUs, the second busy at the snapshot: the
# restored guest and two forks of the snapshot run on both (a busy loop pinned to CPU 1 goes on).
# Damaged snapshots (a flipped byte, truncated state or
# memory) are refused with a clear error and leave no VM process behind.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-snap-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-templates
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR"
mem_mb=256
# The 2nd vCPU runs a busy loop pinned to it until /stop exists; field 39 of /proc/PID/stat is the CPU.
spin='taskset 2 sh -c "while [ ! -e /stop ]; do :; done" </dev/null >/dev/null 2>&1 & echo $!'
on_cpu() { "$CLONE_BIN" exec --vm-id "$1" -- taskset "$2" cut -d' ' -f39 /proc/self/stat 2>/dev/null || true; }
cpu1_ticks() { "$CLONE_BIN" exec --vm-id "$1" -- sh -c 'grep "^cpu1 " /proc/stat' 2>/dev/null | awk '{print $2 + $4}' || true; }

# --- the source VM ---
id=$("$CLONE_BIN" run -d --name src --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" \
  --mem-mb $mem_mb --vcpus 2 --cmdline "console=ttyS0 quiet panic=-1" 2>"$E2E_WORK/src.err") || true
check "source VM started" test "$id" = src
check "source agent reachable" wait_agent src
marker="marker-$RANDOM-$RANDOM"
"$CLONE_BIN" exec --vm-id src -- sh -c "echo $marker > /marker" || true
up_before=$("$CLONE_BIN" exec --vm-id src -- cut -d' ' -f1 /proc/uptime) || true
echo "source uptime before the snapshot: $up_before s"
spin_pid=$("$CLONE_BIN" exec --vm-id src -- sh -c "$spin") || true
check "source: a busy loop runs on CPU 1" test "$("$CLONE_BIN" exec --vm-id src -- cut -d' ' -f39 /proc/"$spin_pid"/stat 2>/dev/null)" = 1

# --- take it ---
t0=$(now)
out=$("$CLONE_BIN" snapshot --name t1 2>"$E2E_WORK/snap.err") || true
echo "snapshot: $out ($(since "$t0") s)"
cat "$E2E_WORK/snap.err"
check "clone snapshot --name t1 succeeds" test -d "$CLONE_TEMPLATES_DIR/t1"
check "snapshot has memory, state, config" test -f "$CLONE_TEMPLATES_DIR/t1/memory" -a -f "$CLONE_TEMPLATES_DIR/t1/state" -a -f "$CLONE_TEMPLATES_DIR/t1/config"
check "no temporary directory is left" test -z "$(ls -A "$CLONE_TEMPLATES_DIR" | grep '^\.')"
apparent=$(stat -c %s "$CLONE_TEMPLATES_DIR/t1/memory")
allocated=$(( $(stat -c %b "$CLONE_TEMPLATES_DIR/t1/memory") * $(stat -c %B "$CLONE_TEMPLATES_DIR/t1/memory") ))
echo "memory file: apparent $((apparent >> 20)) MiB, allocated $((allocated >> 20)) MiB"
check "memory file is the guest RAM size" test "$apparent" = $((mem_mb << 20))
check "memory file is sparse (allocated < half the RAM)" test "$allocated" -lt $(((mem_mb << 20) / 2))
out=$("$CLONE_BIN" exec --vm-id src -- echo still-running) || true
check "the source resumed after the snapshot" test "$out" = still-running
status=0; "$CLONE_BIN" snapshot --name t1 2>"$E2E_WORK/dup.err" || status=$?
check "an existing name is refused" bash -c "[[ $status == 1 ]] && grep -q 'already exists' '$E2E_WORK/dup.err'"
"$CLONE_BIN" snapshot list >"$E2E_WORK/list.txt"
cat "$E2E_WORK/list.txt"
check "snapshot list shows t1" grep -q '^t1 ' "$E2E_WORK/list.txt"

# Damaged copies, made before the source goes away.
for n in flip trunc mem; do cp -a --sparse=always "$CLONE_TEMPLATES_DIR/t1" "$CLONE_TEMPLATES_DIR/$n"; done
state_size=$(stat -c %s "$CLONE_TEMPLATES_DIR/flip/state")
printf '\x5a' | dd of="$CLONE_TEMPLATES_DIR/flip/state" bs=1 seek=$((state_size / 2)) conv=notrunc status=none
truncate -s $((state_size - 100)) "$CLONE_TEMPLATES_DIR/trunc/state"
truncate -s $(((mem_mb << 20) - 4096)) "$CLONE_TEMPLATES_DIR/mem/memory"

check "source stopped" stop_vm src

# --- restore ---
t0=$(now)
id=$("$CLONE_BIN" restore --snapshot t1 --name r1 -d 2>"$E2E_WORK/r1.err") || true
echo "restore -d returned after $(since "$t0") s"
cat "$E2E_WORK/r1.err"
check "clone restore -d prints the id" test "$id" = r1
ready=0; wait_agent r1 && ready=1
echo "restored agent answered $(since "$t0") s after restore"
check "restored VM: the agent answers" test "$ready" = 1
if [[ $ready != 1 ]]; then tail -30 "$CLONE_RUNTIME_DIR/vms/r1/console.log" 2>/dev/null; fi
out=$("$CLONE_BIN" exec --vm-id r1 -- cat /marker) || true
check "restored VM: the marker written before the snapshot is there" test "$out" = "$marker"
up_after=$("$CLONE_BIN" exec --vm-id r1 -- cut -d' ' -f1 /proc/uptime) || true
echo "restored uptime: $up_after s (was $up_before s)"
check "restored VM: uptime continued (no reboot, no jump)" awk -v a="$up_before" -v b="$up_after" 'BEGIN{exit !(b >= a && b < a + 600)}'
out=$("$CLONE_BIN" exec --vm-id r1 -- sh -c 'echo $((6*7)); ls /proc/self >/dev/null && echo ok') || true
check "restored VM runs commands" test "$out" = "$(printf '42\nok')"
sum=$("$CLONE_BIN" exec --vm-id r1 -- sh -c 'head -c 4194304 /dev/urandom | tee /tmp/r | md5sum' | cut -d' ' -f1) || true
sum2=$("$CLONE_BIN" exec --vm-id r1 -- cat /tmp/r | md5sum | cut -d' ' -f1) || true
check "restored VM: vsock data path carries 4 MiB intact" test -n "$sum" -a "$sum" = "$sum2"
out=$("$CLONE_BIN" exec --vm-id r1 -- nproc) || true
check "restored VM: 2 CPUs online" test "$out" = 2
out=$("$CLONE_BIN" exec --vm-id r1 -- cut -d' ' -f39 /proc/"$spin_pid"/stat) || true
check "restored VM: the busy loop from before the snapshot still runs on CPU 1" test "$out" = 1
a=$(cpu1_ticks r1); sleep 2; b=$(cpu1_ticks r1)
echo "restored VM: CPU 1 user+system ticks $a -> $b"
check "restored VM: CPU 1 executes (its tick count grows)" test "${b:-0}" -gt "${a:-0}"
"$CLONE_BIN" exec --vm-id r1 -- touch /stop || true
check "restored VM: a new process runs on CPU 0" test "$(on_cpu r1 1)" = 0
check "restored VM: a new process runs on CPU 1" test "$(on_cpu r1 2)" = 1
out=$( (printf 'echo console-$((6*7))\n'; sleep 4) | timeout 8 socat - UNIX-CONNECT:"$CLONE_RUNTIME_DIR/vms/r1/console.sock" 2>/dev/null | tr -d '\r' | grep -a console-42 | head -1) || true
if command -v socat >/dev/null; then check "restored VM: the serial console answers" test "$out" = console-42; fi

# --- forks of the 2-vCPU snapshot ---
t0=$(now)
ids=$("$CLONE_BIN" fork --template t1 --count 2 --name f 2>"$E2E_WORK/fork.err" | tr '\n' ' ') || true
echo "fork --count 2: '$ids' in $(since "$t0") s"; cat "$E2E_WORK/fork.err"
check "fork --count 2 of the 2-vCPU snapshot prints both ids" test "$ids" = "f-1 f-2 "
for f in f-1 f-2; do
  check "$f: the agent answers" wait_agent "$f"
  check "$f: hostname is its id" test "$("$CLONE_BIN" exec --vm-id "$f" -- hostname 2>/dev/null)" = "$f"
  check "$f: 2 CPUs online" test "$("$CLONE_BIN" exec --vm-id "$f" -- nproc 2>/dev/null)" = 2
  check "$f: the template's busy loop goes on on CPU 1" test "$("$CLONE_BIN" exec --vm-id "$f" -- cut -d' ' -f39 /proc/"$spin_pid"/stat 2>/dev/null)" = 1
  "$CLONE_BIN" exec --vm-id "$f" -- touch /stop || true
  check "$f: a new process runs on CPU 1" test "$(on_cpu "$f" 2)" = 1
  check "$f stops cleanly" stop_vm "$f"
done

# --- damaged snapshots ---
for n in flip trunc mem; do
  before=$(ls "$CLONE_RUNTIME_DIR/vms" | sort | tr '\n' ' ')
  procs_before=$(pgrep -c -x clone || true)
  status=0; "$CLONE_BIN" restore --snapshot "$n" --name "bad-$n" -d >"$E2E_WORK/$n.out" 2>"$E2E_WORK/$n.err" || status=$?
  echo "restore $n: status $status: $(cat "$E2E_WORK/$n.err")"
  check "restore of a damaged snapshot ($n) fails with status 1" test "$status" = 1
  after=$(ls "$CLONE_RUNTIME_DIR/vms" | sort | tr '\n' ' ')
  check "restore of $n leaves no VM behind" test "$before" = "$after"
  check "restore of $n: no process left" test "$(pgrep -c -x clone || true)" = "$procs_before"
done
check "flipped byte: says corrupt" grep -q 'corrupt (CRC mismatch)' "$E2E_WORK/flip.err"
check "truncated state: says truncated" grep -q 'truncated' "$E2E_WORK/trunc.err"
check "truncated memory: says truncated" grep -q 'truncated' "$E2E_WORK/mem.err"
status=0; "$CLONE_BIN" restore --snapshot nosuch 2>"$E2E_WORK/nosuch.err" || status=$?
check "missing snapshot: clear error" bash -c "[[ $status == 1 ]] && grep -q \"no snapshot 'nosuch'\" '$E2E_WORK/nosuch.err'"

"$CLONE_BIN" snapshot rm flip || true
check "snapshot rm removes it" test ! -e "$CLONE_TEMPLATES_DIR/flip"
check "restored VM stops cleanly" stop_vm r1
rm -rf "$CLONE_TEMPLATES_DIR"
e2e_finish
