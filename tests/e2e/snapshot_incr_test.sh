#!/usr/bin/env bash
# Incremental snapshots end to end (KVM dirty log + the virtqueue/vhost dirty logs): a 512 MiB
# stock Debian guest with the agent gets a full snapshot, then 8 MiB of random data in a tmpfs file;
# `clone snapshot --parent` writes only what changed (checked: under 16 MiB on disk), a second
# incremental builds on the first, and after the source stops, restoring the chain gives back
# exactly the guest's data (sha256 in the guest). A wrong parent is refused; a missing, damaged or
# replaced parent makes restore fail with a clear error and no VM left behind; `snapshot rm` of a
# parent is refused; `snapshot merge` turns the incremental into a full snapshot that restores alone.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-incr-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-incr-templates
T=$CLONE_TEMPLATES_DIR
rm -rf "$CLONE_RUNTIME_DIR" "$T" /tmp/clone-e2e-incr-t[234]
mem_mb=512
on_disk() { du -sB1 "$1" | cut -f1; }  # allocated bytes of a snapshot directory (sparse memory)
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
gsum() { "$CLONE_BIN" exec --vm-id "$1" -- sha256sum "$2" 2>/dev/null | cut -d' ' -f1; }
snap() { # snap NAME [clone snapshot args...]: prints the CLI's line and the time taken
  local name=$1 t0 out; shift
  t0=$(now)
  out=$("$CLONE_BIN" snapshot --name "$name" "$@" 2>"$E2E_WORK/snap-$name.err") || true
  echo "snapshot $name: $out ($(since "$t0") s)"
  cat "$E2E_WORK/snap-$name.err"
}

# --- the source VM, a full snapshot, then 8 MiB of new data ---
id=$("$CLONE_BIN" run -d --name src --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" \
  --mem-mb $mem_mb --cmdline "console=ttyS0 quiet panic=-1" 2>"$E2E_WORK/src.err") || true
check "source VM started" test "$id" = src
check "source agent reachable" wait_agent src
"$CLONE_BIN" exec --vm-id src -- sh -c 'mkdir -p /mnt/t && mount -t tmpfs -o size=64m tmpfs /mnt/t && echo before > /mnt/t/marker' || true

snap base
check "full snapshot 'base' taken" test -f "$T/base/memory"
echo "base on disk: $(mib "$(on_disk "$T/base")")"

"$CLONE_BIN" exec --vm-id src -- sh -c 'head -c 8388608 /dev/urandom > /mnt/t/data' || true
sum1=$(gsum src /mnt/t/data)
echo "guest data: 8 MiB, sha256 $sum1"
check "the guest wrote 8 MiB" test -n "$sum1"

snap inc --parent base
check "incremental snapshot 'inc' taken" test -f "$T/inc/memory"
inc_bytes=$(on_disk "$T/inc")
echo "incremental on disk: $(mib "$inc_bytes") (memory file apparent size $(mib "$(stat -c %s "$T/inc/memory")"))"
check "incremental snapshot of 8 MiB of new data is under 16 MiB on disk" test "$inc_bytes" -lt $((16 << 20))
check "its config names its parent" grep -q '"parent"' "$T/inc/config"

"$CLONE_BIN" exec --vm-id src -- sh -c 'head -c 1048576 /dev/urandom > /mnt/t/data2' || true
sum2=$(gsum src /mnt/t/data2)
snap inc2 --parent inc
check "second-level incremental 'inc2' taken" test -f "$T/inc2/memory"
echo "inc2 on disk: $(mib "$(on_disk "$T/inc2")")"

# --- wrong parents are refused ---
status=0; "$CLONE_BIN" snapshot --name bad1 --parent base 2>"$E2E_WORK/bad1.err" || status=$?
cat "$E2E_WORK/bad1.err"
check "--parent that is not the VM's latest snapshot is refused" bash -c "[[ $status == 1 ]] && grep -q 'was not taken from this VM since it started' '$E2E_WORK/bad1.err'"
status=0; "$CLONE_BIN" snapshot --name bad2 --parent nosuch 2>"$E2E_WORK/bad2.err" || status=$?
check "--parent naming no snapshot of this VM is refused" bash -c "[[ $status == 1 ]] && grep -q 'take a full snapshot' '$E2E_WORK/bad2.err'"
check "refused incrementals leave nothing" test ! -e "$T/bad1" -a ! -e "$T/bad2" -a -z "$(ls -A "$T" | grep '^\.')"

status=0; "$CLONE_BIN" snapshot rm base 2>"$E2E_WORK/rm.err" || status=$?
cat "$E2E_WORK/rm.err"
check "snapshot rm of a parent is refused, naming the child" bash -c "[[ $status == 1 ]] && grep -q \"incremental snapshot 'inc'\" '$E2E_WORK/rm.err'"
"$CLONE_BIN" snapshot list | tee "$E2E_WORK/list.txt"
check "snapshot list marks the incrementals" grep -q '^inc2 .*incremental over inc' "$E2E_WORK/list.txt"

# Broken chains, in their own templates directories: a missing, a damaged and a replaced parent.
T2=/tmp/clone-e2e-incr-t2 T3=/tmp/clone-e2e-incr-t3 T4=/tmp/clone-e2e-incr-t4
mkdir -p "$T2" "$T3" "$T4"
cp -a --sparse=always "$T/inc" "$T/inc2" "$T2/"
cp -a --sparse=always "$T/base" "$T/inc" "$T/inc2" "$T3/"
printf '\x5a' | dd of="$T3/base/state" bs=1 seek=$(($(stat -c %s "$T3/base/state") / 2)) conv=notrunc status=none
snap other  # a full snapshot: the replacement "base" (same name, another id)
cp -a --sparse=always "$T/other" "$T4/base"
cp -a --sparse=always "$T/inc" "$T/inc2" "$T4/"

check "source stopped" stop_vm src

# --- restore the chain ---
t0=$(now)
id=$("$CLONE_BIN" restore --snapshot inc2 --name r1 -d 2>"$E2E_WORK/r1.err") || true
echo "restore -d of inc2 (base + 2 layers) returned after $(since "$t0") s"
cat "$E2E_WORK/r1.err"
check "restore of the incremental chain starts" test "$id" = r1
ready=0; wait_agent r1 && ready=1
echo "restored agent answered $(since "$t0") s after restore"
check "restored VM: the agent answers" test "$ready" = 1
check "restored VM: the 8 MiB written before 'inc' are intact (sha256)" test "$(gsum r1 /mnt/t/data)" = "$sum1"
check "restored VM: the 1 MiB written before 'inc2' is intact (sha256)" test "$(gsum r1 /mnt/t/data2)" = "$sum2"
check "restored VM: data from before 'base' is there" test "$("$CLONE_BIN" exec --vm-id r1 -- cat /mnt/t/marker)" = before
check "restored VM stops cleanly" stop_vm r1

for case in "$T2:no snapshot 'base'" "$T3:corrupt" "$T4:has changed since"; do
  dir=${case%%:*} want=${case#*:}
  before=$(ls "$CLONE_RUNTIME_DIR/vms" | sort | tr '\n' ' ')
  status=0; "$CLONE_BIN" restore --dir "$dir" --snapshot inc2 --name bad -d >/dev/null 2>"$E2E_WORK/bad.err" || status=$?
  echo "restore with a broken parent ($dir): status $status: $(cat "$E2E_WORK/bad.err")"
  check "broken parent ($want): restore fails with a clear error" bash -c "[[ $status == 1 ]] && grep -q \"$want\" '$E2E_WORK/bad.err' && grep -q \"parent 'base'\" '$E2E_WORK/bad.err'"
  check "broken parent ($want): no VM left behind" test "$before" = "$(ls "$CLONE_RUNTIME_DIR/vms" | sort | tr '\n' ' ')"
done

# --- merge ---
t0=$(now)
out=$("$CLONE_BIN" snapshot merge inc2 2>"$E2E_WORK/merge.err") || true
echo "merge: $out ($(since "$t0") s)"
cat "$E2E_WORK/merge.err"
check "merge makes inc2 a full snapshot" bash -c "test -f '$T/inc2/memory' && ! grep -q '\"parent\"' '$T/inc2/config'"
check "merge leaves no temporary directory" test -z "$(ls -A "$T" | grep '^\.')"
echo "merged inc2 on disk: $(mib "$(on_disk "$T/inc2")")"
"$CLONE_BIN" snapshot rm inc 2>&1 && "$CLONE_BIN" snapshot rm base 2>&1 || true
check "after the merge its parents can be removed" test ! -e "$T/inc" -a ! -e "$T/base"
id=$("$CLONE_BIN" restore --snapshot inc2 --name r2 -d 2>"$E2E_WORK/r2.err") || true
cat "$E2E_WORK/r2.err"
check "the merged snapshot restores on its own" test "$id" = r2
check "merged restore: the agent answers" wait_agent r2
check "merged restore: the 8 MiB are intact (sha256)" test "$(gsum r2 /mnt/t/data)" = "$sum1"
check "merged restore: the 1 MiB is intact (sha256)" test "$(gsum r2 /mnt/t/data2)" = "$sum2"
check "merged restore stops cleanly" stop_vm r2
rm -rf "$T" "$T2" "$T3" "$T4"
e2e_finish
