#!/usr/bin/env bash
# A guest that corrupts a virtqueue leaves the VMM running (issue #3), shown from a stock kernel:
# the guest unbinds its second disk from the virtio-mmio driver and drives it by hand
# (tests/guest/virtio-corrupt.c: registers through /dev/mem, rings in a locked user page) with a
# descriptor table outside RAM, a descriptor loop and a buffer outside RAM. Each time the device
# must report DEVICE_NEEDS_RESET, recover when the driver is bound again (it resets the device),
# while the first disk and virtio-rng keep working and the VM powers off normally.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local mods=$LAB_CLOUD_MODULES/kernel/drivers
  cc -static -O2 -Wall -Wextra -Werror -o "$E2E_WORK/virtio-corrupt" "$E2E_ROOT/tests/guest/virtio-corrupt.c"
  e2e_initrd "$E2E_WORK/corrupt.cpio.gz" "$E2E_ROOT/tests/guest/init-corrupt.sh" \
    "$E2E_WORK/virtio-corrupt:/bin/virtio-corrupt" \
    "$mods/virtio/virtio_ring.ko:/modules/" "$mods/virtio/virtio.ko:/modules/" \
    "$mods/virtio/virtio_mmio.ko:/modules/" "$mods/block/virtio_blk.ko:/modules/" \
    "$mods/char/hw_random/virtio-rng.ko:/modules/"
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-corrupt
rm -rf "$w"
mkdir -p "$w"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$w/a.raw"
truncate -s 4M "$w/b.raw"
out=$E2E_WORK/out.txt
status=0
timeout 240 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/corrupt.cpio.gz" --mem-mb 256 \
  --cmdline "console=ttyS0 quiet panic=-1" --block "$w/a.raw" --block "$w/b.raw" \
  </dev/null >"$out" 2>"$out.err" || status=$?
grep -a "CLONE-CORRUPT" "$out" | tr -d '\r' | sed 's/^/    /'
sed 's/^/    stderr: /' "$out.err" | head -10

check "the VM ran to its poweroff (exit status 0)" test "$status" = 0
check "the guest found the second disk's registers" grep -qa "CLONE-CORRUPT victim=LNRO0005:[0-9]* base=[0-9a-f]" "$out"
for mode in ring loop oob; do
  check "$mode: the device reports DEVICE_NEEDS_RESET" grep -qa "CLONE-CORRUPT mode=$mode status=0x[0-9a-f]* needs_reset=1" "$out"
  check "$mode: rebinding the driver resets and recovers the disk" grep -qa "CLONE-CORRUPT mode=$mode rebound vdb-bytes=65536" "$out"
done
check "the other disk kept working, unchanged" grep -qa "CLONE-CORRUPT vda-same=1 vda-bytes=262144" "$out"
check "virtio-rng kept working" grep -qa "CLONE-CORRUPT rng-bytes=256" "$out"
check "the VMM logged each guest error" test "$(grep -c 'needs reset after a guest error' "$out.err")" -ge 1
rm -rf "$w"
e2e_finish
