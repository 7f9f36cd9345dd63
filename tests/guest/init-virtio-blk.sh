#!/bin/sh
# /init for the virtio-blk end-to-end test. Loads the virtio modules shipped in /modules, then acts
# on the kernel parameter clone.blk=write|read|ro against /dev/vda at 64 KiB, with /pattern.bin
# (1 MiB) as the data, and reports "CLONE-BLK ..." lines.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko || echo "CLONE-BLK insmod $m failed"; done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
action=
for p in $(cat /proc/cmdline); do case $p in clone.blk=*) action=${p#clone.blk=} ;; esac; done
echo "CLONE-BLK size=$(cat /sys/block/vda/size 2>/dev/null) ro=$(cat /sys/block/vda/ro 2>/dev/null) serial=$(cat /sys/block/vda/serial 2>/dev/null)"
case $action in
  write)
    if dd if=/pattern.bin of=/dev/vda bs=4096 seek=16 conv=fsync 2>/dev/null && sync; then
      echo "CLONE-BLK wrote"
    else
      echo "CLONE-BLK write-failed"
    fi ;;
  read)
    echo "CLONE-BLK md5=$(dd if=/dev/vda bs=4096 skip=16 count=256 2>/dev/null | md5sum | cut -d' ' -f1)" ;;
  ro)
    if dd if=/pattern.bin of=/dev/vda bs=4096 seek=16 conv=fsync 2>/dev/null; then
      echo "CLONE-BLK ro-write=succeeded"
    else
      echo "CLONE-BLK ro-write=failed"
    fi ;;
esac
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
