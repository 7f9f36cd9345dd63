#!/usr/bin/env bash
# Disks in snapshots end to end (docs/snapshots.md "Disks"): a stock Debian kernel with the guest
# agent, a writable raw data disk, a read-only disk and a writable qcow2 disk. The guest writes a marker to its data disk,
# `clone snapshot` freezes a copy of the disk into the snapshot (the read-only disk is referenced by
# path), the source keeps writing and stops; two `clone restore`s of the snapshot run at once: both
# see the marker, each writes its own data into its own qcow2 overlay (in its runtime directory),
# neither sees the other's, and the frozen base's SHA-256 never changes. A changed or missing base,
# or a moved read-only disk, is refused with a clear error and leaves no VM behind; `--block
# FROM=TO` finds the moved disk.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtio_blk
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-sdisk-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-sdisk-templates
disks=/tmp/clone-e2e-sdisk  # images on L1's own file system, not the 9p share
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR" "$disks" "$disks-moved"
mkdir -p "$disks" "$disks-moved"
tpl=$CLONE_TEMPLATES_DIR/d1
mem_mb=256
gx() { "$CLONE_BIN" exec --vm-id "$@"; }
# guest_write ID DEV OFFSET_BLOCKS TEXT: TEXT at 4 KiB block OFFSET of /dev/DEV, fsynced (a cache flush:
# a bare `sync` flushes no device cache without a file system, and qcow2 metadata is write-back).
guest_write() { gx "$1" -- sh -c "printf '%s' '$4' | dd of=/dev/$2 bs=4096 seek=$3 conv=sync,notrunc,fsync 2>/dev/null"; }
# guest_read ID DEV OFFSET_BLOCKS: the first 32 bytes of that block, read from the device (cache dropped).
guest_read() { gx "$1" -- sh -c "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/$2 bs=4096 skip=$3 count=1 2>/dev/null | head -c 32 | tr -d '\\000'"; }
has() { grep -aq -- "$2" "$1"; }
vms_now() { ls "$CLONE_RUNTIME_DIR/vms" 2>/dev/null | sort | tr '\n' ' '; }

# --- the source VM: a writable raw data disk (vda), a read-only disk (vdb), a writable qcow2 (vdc) ---
truncate -s 64M "$disks/data.raw"
truncate -s 16M "$disks/ro.raw"
qemu-img create -q -f qcow2 "$disks/data.qcow2" 32M
printf 'READ-ONLY-CONTENT' | dd of="$disks/ro.raw" bs=4096 conv=notrunc status=none
id=$("$CLONE_BIN" run -d --name src --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" \
  --mem-mb $mem_mb --cmdline "console=ttyS0 quiet panic=-1" \
  --block "$disks/data.raw,format=raw" --block "$disks/ro.raw,ro,format=raw" \
  --block "$disks/data.qcow2,format=qcow2" 2>"$E2E_WORK/src.err") || true
cat "$E2E_WORK/src.err"
check "source VM started" test "$id" = src
check "source agent reachable" wait_agent src
marker="MARKER-$RANDOM-$RANDOM"
guest_write src vda 0 "$marker" || true
guest_write src vdc 100 "QCOW2-$marker" || true
check "source: the marker reached the data disk on the host" has "$disks/data.raw" "$marker"
check "source: reads the read-only disk" test "$(guest_read src vdb 0)" = READ-ONLY-CONTENT

# --- snapshot: the data disk is frozen into the snapshot, the read-only one referenced ---
out=$("$CLONE_BIN" snapshot --name d1 2>"$E2E_WORK/snap.err") || true
echo "snapshot: $out"
cat "$E2E_WORK/snap.err"
check "clone snapshot of a VM with disks succeeds" test -f "$tpl/config"
check "the writable disk is frozen in the snapshot (disk0.raw)" test -f "$tpl/disk0.raw"
check "the read-only disk is not copied" test ! -e "$tpl/disk1.raw"
check "the frozen copy holds the marker" has "$tpl/disk0.raw" "$marker"
check "the qcow2 disk is frozen too (disk2.qcow2), and qemu-img check finds it clean" qemu-img check -q "$tpl/disk2.qcow2"
check "the config references the read-only disk by path" grep -q "\"path\": \"$disks/ro.raw\"" "$tpl/config"
check "the frozen copy is sparse" test $(($(stat -c %b "$tpl/disk0.raw") * 512)) -lt $((8 << 20))
base_sum=$(sha256sum "$tpl/disk0.raw" | cut -d' ' -f1)
qbase_sum=$(sha256sum "$tpl/disk2.qcow2" | cut -d' ' -f1)
guest_write src vda 16 "SOURCE-AFTER-SNAPSHOT" || true
check "the source keeps its disk after the snapshot" has "$disks/data.raw" SOURCE-AFTER-SNAPSHOT
check "the frozen copy does not follow the source" bash -c "! grep -aq SOURCE-AFTER-SNAPSHOT '$tpl/disk0.raw'"
check "source stopped" stop_vm src

# --- two restores at once ---
for r in r1 r2; do
  cid=$([[ $r == r1 ]] && echo 10 || echo 11)
  id=$("$CLONE_BIN" restore --snapshot d1 --name $r --cid $cid -d 2>"$E2E_WORK/$r.err") || true
  cat "$E2E_WORK/$r.err"
  check "restore $r -d prints its id" test "$id" = $r
done
for r in r1 r2; do
  ready=0; wait_agent $r && ready=1
  check "$r: the agent answers" test $ready = 1
  if [[ $ready != 1 ]]; then tail -20 "$CLONE_RUNTIME_DIR/vms/$r/console.log" 2>/dev/null; fi
  check "$r: its overlay is in its runtime directory" test -f "$CLONE_RUNTIME_DIR/vms/$r/disk0.qcow2"
  check "$r: sees the marker written before the snapshot" test "$(guest_read $r vda 0)" = "$marker"
  check "$r: does not see what the source wrote after it" test -z "$(guest_read $r vda 16)"
  check "$r: reads the read-only disk" test "$(guest_read $r vdb 0)" = READ-ONLY-CONTENT
  check "$r: sees the qcow2 disk's marker" test "$(guest_read $r vdc 100)" = "QCOW2-$marker"
  check "$r: its qcow2 disk has an overlay too" test -f "$CLONE_RUNTIME_DIR/vms/$r/disk2.qcow2"
done
guest_write r1 vda 256 "DATA-OF-R1" || true
guest_write r2 vda 256 "DATA-OF-R2" || true
check "r1 reads its own data" test "$(guest_read r1 vda 256)" = DATA-OF-R1
check "r2 reads its own data" test "$(guest_read r2 vda 256)" = DATA-OF-R2
guest_write r1 vdc 100 "QCOW2-OF-R1" || true
check "r1 rewrote its qcow2 disk" test "$(guest_read r1 vdc 100)" = QCOW2-OF-R1
check "r2 still reads the snapshot's qcow2 data" test "$(guest_read r2 vdc 100)" = "QCOW2-$marker"
status=0; gx r1 -- sh -c "echo x | dd of=/dev/vdb bs=4096 conv=sync,notrunc 2>/dev/null && sync" || status=$?
check "r1 cannot write the read-only disk" test "$status" != 0
for r in r1 r2; do
  qemu-img convert -U -f qcow2 -O raw "$CLONE_RUNTIME_DIR/vms/$r/disk0.qcow2" "$disks/$r.raw" 2>&1 || true
  check "$r: qemu-img check of its overlay is clean" qemu-img check -U -q "$CLONE_RUNTIME_DIR/vms/$r/disk0.qcow2"
done
check "r1's overlay holds r1's data and the marker, not r2's" \
  bash -c "grep -aq DATA-OF-R1 '$disks/r1.raw' && grep -aq '$marker' '$disks/r1.raw' && ! grep -aq DATA-OF-R2 '$disks/r1.raw'"
check "r2's overlay holds r2's data, not r1's" \
  bash -c "grep -aq DATA-OF-R2 '$disks/r2.raw' && ! grep -aq DATA-OF-R1 '$disks/r2.raw'"
check "the frozen base is unchanged (sha256)" test "$(sha256sum "$tpl/disk0.raw" | cut -d' ' -f1)" = "$base_sum"
check "the frozen qcow2 base is unchanged (sha256)" test "$(sha256sum "$tpl/disk2.qcow2" | cut -d' ' -f1)" = "$qbase_sum"
check "the source's own image was not touched by the restores" bash -c "! grep -aq DATA-OF-R '$disks/data.raw'"
for r in r1 r2; do check "$r stops cleanly" stop_vm $r; done
check "the overlays went with the VMs" test -z "$(vms_now)"

# --- refused restores: changed base, missing base, moved read-only disk; nothing left behind ---
for n in changed missing; do cp -a --sparse=always "$tpl" "$CLONE_TEMPLATES_DIR/$n"; done
printf 'x' | dd of="$CLONE_TEMPLATES_DIR/changed/disk0.raw" bs=1 seek=100 conv=notrunc status=none
rm "$CLONE_TEMPLATES_DIR/missing/disk0.raw"
mv "$disks/ro.raw" "$disks-moved/ro.raw"
refused() { # refused STATUS SNAPSHOT NAME PATTERN [ARGS...]: restore exits STATUS with PATTERN, no VM left
  local want=$1 snap=$2 name=$3 pattern=$4 status=0
  shift 4
  local before procs
  before=$(vms_now)
  procs=$(pgrep -c -x clone || true)
  "$CLONE_BIN" restore --snapshot "$snap" --name "$name" -d "$@" >"$E2E_WORK/$name.out" 2>"$E2E_WORK/$name.err" || status=$?
  echo "restore $snap: status $status: $(cat "$E2E_WORK/$name.err")"
  [[ $status == "$want" ]] && grep -q -- "$pattern" "$E2E_WORK/$name.err" && [[ $(vms_now) == "$before" ]] &&
    [[ $(pgrep -c -x clone || true) == "$procs" ]]
}
check "changed frozen base: refused, clear error, no VM left" refused 1 changed bad1 "frozen base of disk 0 .* changed since the snapshot"
check "missing frozen base: refused, clear error, no VM left" refused 1 missing bad2 "frozen base of disk 0 .* is missing"
check "moved read-only disk: refused, clear error, no VM left" refused 1 d1 bad3 "read-only disk 1 $disks/ro.raw is missing"
check "a relative --block rewrite is refused" refused 2 d1 bad4 "must be an absolute path" --block "$disks=moved"
id=$("$CLONE_BIN" restore --snapshot d1 --name r3 --cid 12 -d --block "$disks=$disks-moved" 2>"$E2E_WORK/r3.err") || true
cat "$E2E_WORK/r3.err"
check "--block FROM=TO finds the moved read-only disk" test "$id" = r3
if [[ $id == r3 ]]; then
  wait_agent r3 || true
  check "r3: reads the moved read-only disk" test "$(guest_read r3 vdb 0)" = READ-ONLY-CONTENT
  check "r3: starts from the frozen base, not from r1's or r2's writes" test -z "$(guest_read r3 vda 256)"
  check "r3 stops cleanly" stop_vm r3
fi
check "the frozen base is still unchanged" test "$(sha256sum "$tpl/disk0.raw" | cut -d' ' -f1)" = "$base_sum"
rm -rf "$CLONE_TEMPLATES_DIR" "$disks" "$disks-moved"
e2e_finish
