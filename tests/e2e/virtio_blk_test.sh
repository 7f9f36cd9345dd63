#!/usr/bin/env bash
# virtio-blk end to end with a stock kernel: data written by the guest reaches raw and qcow2 images
# (checked on the host, and with qemu-img for qcow2), survives a reboot, reads through a qcow2
# backing file, and a read-only disk refuses writes and stays unchanged.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local mods=$LAB_CLOUD_MODULES/kernel/drivers
  head -c $((1024 * 1024)) /dev/urandom >"$E2E_WORK/pattern.bin"
  e2e_initrd "$E2E_WORK/blk.cpio.gz" "$E2E_ROOT/tests/guest/init-virtio-blk.sh" \
    "$E2E_WORK/pattern.bin:/pattern.bin" \
    "$mods/virtio/virtio_ring.ko:/modules/" "$mods/virtio/virtio.ko:/modules/" \
    "$mods/virtio/virtio_mmio.ko:/modules/" "$mods/block/virtio_blk.ko:/modules/"
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-blk  # images on L1's tmpfs, not on the 9p share
rm -rf "$w"
mkdir -p "$w"
out=$E2E_WORK/out.txt
want=$(md5sum <"$E2E_WORK/pattern.bin" | cut -d' ' -f1)

guest() { # guest ACTION --block SPEC...
  local action=$1
  shift
  status=0
  timeout 180 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/blk.cpio.gz" --mem-mb 256 \
    --cmdline "console=ttyS0 quiet panic=-1 clone.blk=$action" "$@" </dev/null >"$out" 2>"$out.err" || status=$?
  grep -a "CLONE-BLK" "$out" | tr -d '\r' | sed 's/^/    /'
  if [[ $status != 0 ]]; then tail -15 "$out"; cat "$out.err"; fi
}
region_md5() { dd if="$1" bs=4096 skip=16 count=256 2>/dev/null | md5sum | cut -d' ' -f1; }

# raw
truncate -s 64M "$w/disk.raw"
guest write --block "$w/disk.raw"
check "raw: guest wrote and powered off" grep -q "CLONE-BLK wrote" "$out"
check "raw: capacity seen by the guest (131072 sectors)" grep -q "size=131072 ro=0 serial=clone-disk0" "$out"
check "raw: the bytes reached the image file" test "$(region_md5 "$w/disk.raw")" = "$want"
guest read --block "$w/disk.raw"
check "raw: data survives a reboot" grep -q "md5=$want" "$out"

# qcow2 made by qemu-img
qemu-img create -q -f qcow2 "$w/disk.qcow2" 64M
guest write --block "$w/disk.qcow2"
check "qcow2: guest wrote" grep -q "CLONE-BLK wrote" "$out"
check "qcow2: qemu-img check is clean" qemu-img check -q "$w/disk.qcow2"
qemu-img convert -O raw "$w/disk.qcow2" "$w/qcow2.raw"
check "qcow2: qemu-img reads back what the guest wrote" test "$(region_md5 "$w/qcow2.raw")" = "$want"
guest read --block "$w/disk.qcow2,format=qcow2"
check "qcow2: data survives a reboot" grep -q "md5=$want" "$out"

# qcow2 overlay on a raw backing file: reads fall through to the base
qemu-img create -q -f qcow2 -b "$w/disk.raw" -F raw "$w/overlay.qcow2"
base_sum=$(md5sum <"$w/disk.raw")
guest read --block "$w/overlay.qcow2"
check "overlay: reads through the backing file" grep -q "md5=$want" "$out"

# read-only
guest ro --block "$w/disk.raw,ro"
check "read-only: the guest sees ro=1" grep -q "ro=1" "$out"
check "read-only: the write fails" grep -q "ro-write=failed" "$out"
check "read-only: the image is unchanged" test "$(md5sum <"$w/disk.raw")" = "$base_sum"

rm -rf "$w"
e2e_finish
