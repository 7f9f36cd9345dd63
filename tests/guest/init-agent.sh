#!/bin/sh
# /init for tests that talk to the guest agent: loads virtio-mmio + vsock (modules shipped in
# /modules by the test, in dependency order listed in /modules/order), starts clone-agent, then
# keeps an interactive shell on the serial console (for `clone attach`) until powered off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
if [ -f /modules/order ]; then
  for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "CLONE-AGENT insmod $m failed"; done
fi
hostname guest
if ! grep -q clone.noagent /proc/cmdline; then
  /usr/bin/clone-agent --daemon || echo "CLONE-AGENT failed to start"
fi
echo "CLONE-AGENT-READY"
while :; do
  setsid cttyhack sh -l
done
