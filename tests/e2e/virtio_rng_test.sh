#!/usr/bin/env bash
# virtio-mmio end to end: a stock Debian kernel finds Clone's virtio-rng through the ACPI DSDT
# (LNRO0005; these kernels have no virtio-mmio command-line devices), binds virtio_rng, and reads
# entropy from /dev/hwrng.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local mods=$LAB_CLOUD_MODULES/kernel/drivers
  e2e_initrd "$E2E_WORK/rng.cpio.gz" "$E2E_ROOT/tests/guest/init-virtio-rng.sh" \
    "$mods/virtio/virtio.ko:/modules/" "$mods/virtio/virtio_ring.ko:/modules/" \
    "$mods/virtio/virtio_mmio.ko:/modules/" "$mods/char/hw_random/virtio-rng.ko:/modules/"
}
e2e_enter_lab "$0" "$@"

out=$E2E_WORK/out.txt
status=0
timeout 180 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/rng.cpio.gz" --mem-mb 256 \
  --cmdline "console=ttyS0 quiet panic=-1" </dev/null >"$out" 2>"$out.err" || status=$?
grep -a "CLONE-RNG" "$out" || true
check "guest powered off (status 0)" test "$status" = 0
check "modules loaded" bash -c "! grep -q 'insmod .* failed' '$out'"
check "hw_random uses virtio_rng" grep -q "CLONE-RNG current=virtio_rng" "$out"
check "256 bytes read from /dev/hwrng" grep -q "bytes=256" "$out"
if [[ $E2E_FAILURES -gt 0 ]]; then tail -20 "$out"; cat "$out.err"; fi
e2e_finish
