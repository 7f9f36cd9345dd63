#!/bin/sh
# /init for the virtio-net end-to-end test. Loads virtio-mmio and virtio_net from /modules, gives
# eth0 10.0.77.2/24, reports its MAC and the negotiated feature bits ("features=" is virtio's
# bitstring, bit 0 first), pings the host (10.0.77.1), receives one TCP transfer on port 7002
# (reports its md5), then sends clone.tx_mib MiB of zeros to 10.0.77.1:7001 and powers off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do
  insmod /modules/$m.ko || echo "CLONE-NET insmod $m failed"
done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
tx_mib=16
for p in $(cat /proc/cmdline); do case $p in clone.tx_mib=*) tx_mib=${p#clone.tx_mib=} ;; esac; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.77.2/24 dev eth0
echo "CLONE-NET mac=$(cat /sys/class/net/eth0/address)"
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat "$d/device")" = 0x0001 ] && echo "CLONE-NET features=$(cat "$d/features")"
done
if ping -c 3 -W 5 10.0.77.1 >/dev/null 2>&1; then echo "CLONE-NET ping-host=ok"; else echo "CLONE-NET ping-host=fail"; fi
nc -l -p 7002 >/tmp/recv &
ncpid=$!
sleep 1
echo "CLONE-NET ready"
for _ in $(seq 120); do kill -0 $ncpid 2>/dev/null || break; sleep 1; done
echo "CLONE-NET recv-md5=$(md5sum </tmp/recv | cut -d' ' -f1)"
if dd if=/dev/zero bs=65536 count=$((tx_mib * 16)) 2>/dev/null | nc 10.0.77.1 7001; then
  echo "CLONE-NET tx=done"
else
  echo "CLONE-NET tx=failed"
fi
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
