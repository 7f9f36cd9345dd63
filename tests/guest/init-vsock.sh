#!/bin/sh
# /init for the virtio-vsock end-to-end test. Loads virtio-mmio and the vsock modules shipped in
# /modules, waits for the virtio transport to report a CID, prints "CLONE-VSOCK cid=N", then obeys
# clone.vsock=talk|hold|cid:
#   talk  listens on vsock port 6000 (one connection, answered by /vsock-test), connects to the host
#         (CID 2) port 5000 and reports the answer and what the host sent ("reply=", "got=")
#   hold  stays up until the VMM is stopped (a second VM can then run next to it)
#   cid   only prints the CID
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
  insmod /modules/$m.ko || echo "CLONE-VSOCK insmod $m failed"
done
cid=
for _ in 1 2 3 4 5 6 7 8 9 10; do
  cid=$(/vsock-test cid 2>/dev/null)
  [ -n "$cid" ] && [ "$cid" != 4294967295 ] && break
  sleep 1
done
echo "CLONE-VSOCK cid=$cid"
action=
for p in $(cat /proc/cmdline); do case $p in clone.vsock=*) action=${p#clone.vsock=} ;; esac; done
case $action in
  talk)
    /vsock-test listen 6000 >/tmp/listen.out 2>&1 &
    lpid=$!
    sleep 1
    echo "CLONE-VSOCK listening"
    echo "CLONE-VSOCK reply=$(/vsock-test connect 2 5000 ping-from-guest 2>&1)"
    for _ in $(seq 90); do kill -0 $lpid 2>/dev/null || break; sleep 1; done
    echo "CLONE-VSOCK got=$(cat /tmp/listen.out)"
    ;;
  hold)
    echo "CLONE-VSOCK holding"
    while :; do sleep 3600; done
    ;;
esac
echo "CLONE-INIT-DONE"
poweroff -f
while :; do sleep 3600; done
