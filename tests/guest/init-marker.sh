#!/bin/sh
# init-marker.sh — the smallest useful /init (see tests/guest/mkinitrd): print the marker line
# CLONE-INIT-DONE on the console as early as possible and power off. Used by the boot benchmark
# (bench/boot/run), which measures launch -> marker.
echo CLONE-INIT-DONE
poweroff -f
while :; do sleep 3600; done
