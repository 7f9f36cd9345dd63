#!/usr/bin/env bash
# fio --verify=crc32c inside a stock-kernel guest passes on raw and qcow2 disks (issue #3): 4 KiB
# random writes with libaio + O_DIRECT at queue depth 16 — on raw images through Clone's io_uring
# path, many requests in flight and completed out of order — every block read back and checked;
# then, after the VMM exited and a new one started, the same pattern verified again.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio virtio_blk crc32c_generic ext4
  e2e_initrd "$E2E_WORK/fio.cpio.gz" "$E2E_ROOT/tests/guest/init-fio.sh" "$E2E_WORK/modules:/modules"
  "$E2E_ROOT/tests/guest/mkfiodisk" "$E2E_WORK/fiotools.img"
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-fio  # images on L1's tmpfs, not on the 9p share
rm -rf "$w"
mkdir -p "$w"
cp --sparse=always "$E2E_WORK/fiotools.img" "$w/tools.img"
out=$E2E_WORK/out.txt

guest() { # guest MODE DISK-SPEC
  status=0
  timeout 600 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/fio.cpio.gz" --mem-mb 512 \
    --cmdline "console=ttyS0 quiet panic=-1 clone.fio=$1" --block "$2" --block "$w/tools.img,ro" \
    </dev/null >"$out" 2>"$out.err" || status=$?
  grep -a "CLONE-FIO\|fio:\|verify:" "$out" | tr -d '\r' | sed 's/^/    /'
  if [[ $status != 0 ]] || ! grep -q "CLONE-INIT-DONE" "$out"; then tail -15 "$out"; cat "$out.err"; fi
}

for format in raw qcow2; do
  img=$w/disk.$format
  qemu-img create -q -f "$format" "$img" 128M
  SECONDS=0
  guest verify "$img,format=$format"
  echo "    ($format verify: ${SECONDS}s)"
  check "$format: fio --verify=crc32c passed" grep -q "CLONE-FIO verify=ok" "$out"
  check "$format: io_uring was available to the VMM" bash -c "! grep -q 'io_uring unavailable' '$out.err'"
  guest reverify "$img,format=$format"
  check "$format: the data verifies again after a VMM restart" grep -q "CLONE-FIO reverify=ok" "$out"
  if [[ $format == qcow2 ]]; then check "qcow2: qemu-img check is clean" qemu-img check -q "$img"; fi
done

rm -rf "$w"
e2e_finish
