#!/bin/sh
# /init for the POSIX conformance comparison (tests/e2e/fsposix_test.sh): loads the modules in
# /modules/order (virtio-mmio for Clone, virtio-pci for QEMU, fuse, virtiofs), mounts the
# virtio-fs tag "posix" on /mnt/fs, runs /fsposix (tests/guest/fsposix.c) in /mnt/fs/run as root
# (it forks unprivileged users itself; its lock checks against a host process need the host side
# running) and powers off. The suite's last line is
# "N passed, M failed"; FSPOSIX-END carries its exit status. With fsposix.mode=squash on the
# command line it instead tries a create, a chmod and an unlink as root (FSPOSIX-SQUASH lines).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules/order); do insmod /modules/$m.ko 2>/dev/null || echo "FSPOSIX insmod $m failed"; done
mkdir -p /mnt/fs
tries=0
until mount -t virtiofs posix /mnt/fs 2>/dev/null; do
  tries=$((tries + 1))
  if [ $tries -ge 50 ]; then echo "FSPOSIX mount failed"; poweroff -f; fi
  sleep 0.1
done
echo "FSPOSIX-BEGIN $(uname -r)"
if grep -q 'fsposix.mode=squash' /proc/cmdline; then
  # A --shared-dir ...:squash-root share: guest root acts as nobody on the host.
  echo root-made >/mnt/fs/by-root; echo "FSPOSIX-SQUASH create=$?"
  chmod 777 /mnt/fs/hostroot.txt 2>/dev/null; echo "FSPOSIX-SQUASH chmod=$?"
  rm -f /mnt/fs/hostroot.txt 2>/dev/null; echo "FSPOSIX-SQUASH rm=$?"
  echo "FSPOSIX-END rc=0"
else
  /fsposix /mnt/fs/run host  # "host": the e2e test runs `fsposix hostside` on the host meanwhile
  echo "FSPOSIX-END rc=$?"
fi
umount /mnt/fs
poweroff -f
while :; do sleep 3600; done
