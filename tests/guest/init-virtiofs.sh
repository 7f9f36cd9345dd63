#!/bin/sh
# /init for the virtio-fs end-to-end test: loads the modules shipped in /modules (dependency order
# in /modules/order: virtio-mmio, vsock, fuse, virtiofs), mounts every shared directory named on
# the kernel command line as clone.fs=TAG:/MOUNTPOINT[,TAG:/MOUNTPOINT...] with
# `mount -t virtiofs`, reports each mount, then starts the guest agent (for `clone exec`) and keeps
# a shell on the serial console until powered off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "CLONE-FS insmod $m failed"; done
hostname guest
for arg in $(cat /proc/cmdline); do
  case $arg in clone.fs=*) specs=${arg#clone.fs=} ;; esac
done
for spec in $(echo "${specs:-}" | tr ',' ' '); do
  tag=${spec%%:*} dir=${spec#*:}
  mkdir -p "$dir"
  if mount -t virtiofs "$tag" "$dir"; then echo "CLONE-FS mounted $tag on $dir"; else echo "CLONE-FS mount $tag failed"; fi
done
/usr/bin/clone-agent --daemon || echo "CLONE-FS agent failed to start"
echo "CLONE-AGENT-READY"
while :; do
  setsid cttyhack sh -l
done
