#!/bin/sh
# /init for fio inside a guest (tests/e2e/fio_test.sh, bench/blk/run). Loads the modules listed in
# /modules/order, finds the tools disk — the virtio disk that mounts as ext4 (read-only): fio, its
# shared libraries in /lib and the dynamic loader in /lib64 — and runs fio against the other
# virtio disk, as the kernel parameter clone.fio= says:
#   verify    4 KiB random writes over the first 64 MiB with crc32c verification (libaio,
#             O_DIRECT, queue depth 16), then every block read back and checked
#   reverify  the same pattern only read back and checked (after a reboot: it persisted)
#   bench     4 KiB random reads (queue depth 32) and 1 MiB sequential reads (queue depth 8),
#             clone.fio_runtime= seconds each (default 5), over the first 256 MiB
# Results: "CLONE-FIO key=value" lines, then CLONE-INIT-DONE and poweroff.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules/order); do insmod /modules/$m.ko 2>/dev/null || echo "CLONE-FIO insmod $m failed"; done
mode= runtime=5
for p in $(cat /proc/cmdline); do
  case $p in
    clone.fio=*) mode=${p#clone.fio=} ;;
    clone.fio_runtime=*) runtime=${p#clone.fio_runtime=} ;;
  esac
done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && [ -b /dev/vdb ] && break; sleep 1; done
mkdir -p /tools
disk=
for d in vda vdb; do
  if [ -z "$(ls /tools)" ] && mount -t ext4 -o ro /dev/$d /tools 2>/dev/null; then :; else disk=/dev/$d; fi
done
[ -x /tools/fio ] && [ -n "$disk" ] || echo "CLONE-FIO error=no-tools-disk"
echo "CLONE-FIO disk=$disk sectors=$(cat /sys/block/${disk#/dev/}/size 2>/dev/null)"
fio() { /tools/lib64/ld-linux-x86-64.so.2 --library-path /tools/lib /tools/fio "$@"; }
# Terse output (version 3): field 7 = read KiB/s, 8 = read IOPS.
terse() { awk -F';' '{ printf "iops=%d kibps=%d", $8, $7 }'; }
verify_job() {
  fio --name=verify --filename="$disk" --rw=randwrite --bs=4k --size=64M --ioengine=libaio --iodepth=16 \
    --direct=1 --verify=crc32c --verify_fatal=1 --randrepeat=1 --randseed=1234 "$@" >/tmp/fio.log 2>&1
}
case $mode in
  verify)
    if verify_job; then echo "CLONE-FIO verify=ok"; else echo "CLONE-FIO verify=failed"; tail -20 /tmp/fio.log; fi ;;
  reverify)
    if verify_job --verify_only; then echo "CLONE-FIO reverify=ok"; else echo "CLONE-FIO reverify=failed"; tail -20 /tmp/fio.log; fi ;;
  bench)
    r=$(fio --name=randread --filename="$disk" --rw=randread --bs=4k --size=256M --ioengine=libaio --iodepth=32 \
      --direct=1 --runtime="$runtime" --time_based --output-format=terse --terse-version=3 2>/dev/null | terse)
    echo "CLONE-FIO randread4k $r"
    s=$(fio --name=seqread --filename="$disk" --rw=read --bs=1M --size=256M --ioengine=libaio --iodepth=8 \
      --direct=1 --runtime="$runtime" --time_based --output-format=terse --terse-version=3 2>/dev/null | terse)
    echo "CLONE-FIO seqread1m $s" ;;
  *) echo "CLONE-FIO error=unknown-mode-$mode" ;;
esac
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
