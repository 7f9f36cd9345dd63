#!/bin/sh
# /init for the virtio-rng end-to-end test: loads the virtio-mmio and virtio-rng modules (shipped
# in /modules by the test), then reports what the kernel's hw_random core sees and reads from it.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio virtio-rng; do insmod /modules/$m.ko || echo "CLONE-RNG insmod $m failed"; done
sleep 1
current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
bytes=$(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c)
echo "CLONE-RNG current=$current bytes=$bytes"
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
