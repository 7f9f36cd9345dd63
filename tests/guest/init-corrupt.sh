#!/bin/sh
# /init for tests/e2e/virtio_corrupt_test.sh: with two virtio disks and virtio-rng, unbinds the
# second disk (vdb) from its driver, lets /bin/virtio-corrupt drive it with hostile queues (modes
# ring, loop, oob), rebinds the driver after each, and checks that vda and the rng keep working.
# Reports "CLONE-CORRUPT ..." lines.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng; do
  insmod /modules/$m.ko || echo "CLONE-CORRUPT insmod $m failed"
done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && [ -b /dev/vdb ] && break; sleep 1; done
drv=/sys/bus/platform/drivers/virtio-mmio
victim=
for d in /sys/bus/platform/devices/LNRO0005:*; do
  for v in "$d"/virtio*/block/vdb; do [ -e "$v" ] && victim=${d##*/}; done
done
base=$(grep " : $victim\$" /proc/iomem | head -1 | sed 's/^ *\([0-9a-f]*\)-.*/\1/')
echo "CLONE-CORRUPT victim=$victim base=$base"
vda_md5() { dd if=/dev/vda bs=4096 count=64 2>/dev/null | md5sum | cut -d' ' -f1; }
before=$(vda_md5)
for mode in ring loop oob; do
  echo "$victim" >"$drv/unbind"
  /bin/virtio-corrupt "$base" "$mode" || echo "CLONE-CORRUPT mode=$mode failed"
  echo "$victim" >"$drv/bind"
  for _ in 1 2 3 4 5; do [ -b /dev/vdb ] && break; sleep 1; done
  n=$(dd if=/dev/vdb bs=4096 count=16 2>/dev/null | wc -c)
  echo "CLONE-CORRUPT mode=$mode rebound vdb-bytes=$n"
done
after=$(vda_md5)
[ "$before" = "$after" ] && same=1 || same=0
echo "CLONE-CORRUPT vda-same=$same vda-bytes=$(dd if=/dev/vda bs=4096 count=64 2>/dev/null | wc -c)"
echo "CLONE-CORRUPT rng-bytes=$(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c)"
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
