#!/usr/bin/env bash
# Boot modes from a disk image: `--rootfs IMG` (read-write; Clone generates the initrd that loads
# virtio/ext4 modules, mounts the disk and switch_roots into its /sbin/init) and
# `--rootfs IMG --overlay` (base read-only under a tmpfs overlay; three VMs share one base at once).
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  local root=$E2E_WORK/rootdir
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp}
  cp "$(command -v busybox)" "$root/bin/busybox"
  for a in sh mount echo cat grep cut sync poweroff sleep head; do ln -s busybox "$root/bin/$a"; done
  cat >"$root/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin
action=
for p in $(cat /proc/cmdline); do case $p in clone.rootfs=*) action=${p#clone.rootfs=} ;; esac; done
echo "CLONE-ROOTFS rootfstype=$(grep ' / ' /proc/mounts | tail -1 | cut -d' ' -f3) hostname=$(cat /etc/hostname)"
case $action in
  write) echo persisted > /data.txt && sync && echo "CLONE-ROOTFS wrote" ;;
  read) echo "CLONE-ROOTFS data=$(cat /data.txt 2>/dev/null)" ;;
  overlay) echo scratch > /overlay.txt && sync && echo "CLONE-ROOTFS overlay=$(cat /overlay.txt)" ;;
  read-overlay) echo "CLONE-ROOTFS overlayfile=$(cat /overlay.txt 2>/dev/null)" ;;
esac
echo CLONE-INIT-DONE
poweroff -f
INIT
  chmod +x "$root/sbin/init"
  # The images are made by Clone itself (mkfs.ext4 -d underneath; qcow2 converted in-process).
  "$CLONE_BIN" rootfs create --from-dir "$root" --size 64M -o "$E2E_WORK/base.img" --hostname e2e-raw
  "$CLONE_BIN" rootfs create --from-dir "$root" --size 64M --format qcow2 -o "$E2E_WORK/base.qcow2" --hostname e2e-qcow2
}
e2e_enter_lab "$0" "$@"

w=/tmp/clone-e2e-rootfs  # images on L1's tmpfs, not on the 9p share
rm -rf "$w"
mkdir -p "$w"
cp "$E2E_WORK/base.img" "$w/rw.img"

vm() { # vm KERNEL MODULES OUT ACTION ARGS...
  local kernel=$1 modules=$2 log=$3 action=$4
  shift 4
  timeout 240 "$CLONE_BIN" run --kernel "$kernel" --modules "$modules" --mem-mb 256 \
    --cmdline "console=ttyS0 quiet panic=-1 clone.rootfs=$action" "$@" </dev/null >"$log" 2>"$log.err"
}
show() { grep -a "CLONE-ROOTFS\|clone-init" "$1" | tr -d '\r' | sed 's/^/    /'; }

# Read-write, generic kernel (ext4, virtio modules loaded from the modules tree).
out=$E2E_WORK/rw.txt
status=0; vm "$LAB_GENERIC_KERNEL" "$LAB_GENERIC_MODULES" "$out" write --rootfs "$w/rw.img" || status=$?
show "$out"
check "rootfs rw: booted the image's /sbin/init and powered off" test "$status" = 0
check "rootfs rw: root is ext4" grep -q "rootfstype=ext4" "$out"
check "rootfs rw: the write succeeded" grep -q "CLONE-ROOTFS wrote" "$out"
check "rootfs rw: the file is in the image (debugfs)" bash -c "debugfs -R 'cat /data.txt' '$w/rw.img' 2>/dev/null | grep -q persisted"
status=0; vm "$LAB_GENERIC_KERNEL" "$LAB_GENERIC_MODULES" "$out" read --rootfs "$w/rw.img" || status=$?
show "$out"
check "rootfs rw: data survives a reboot" grep -q "data=persisted" "$out"

check "rootfs create: the image carries the requested hostname" grep -q "hostname=e2e-raw" "$out"

# A qcow2 image from `clone rootfs create --format qcow2`, booted read-write.
cp "$E2E_WORK/base.qcow2" "$w/base.qcow2"
status=0; vm "$LAB_CLOUD_KERNEL" "$LAB_CLOUD_MODULES" "$out" write --rootfs "$w/base.qcow2" || status=$?
show "$out"
check "rootfs create qcow2: boots and writes" grep -q "CLONE-ROOTFS wrote" "$out"
check "rootfs create qcow2: hostname" grep -q "hostname=e2e-qcow2" "$out"
check "rootfs create qcow2: qemu-img check is clean after the guest wrote" qemu-img check -q "$w/base.qcow2"

# Overlay, cloud kernel: three VMs at once on one read-only base; writes stay in each VM.
before=$(md5sum <"$w/rw.img")
pids=()
for i in 1 2 3; do
  vm "$LAB_CLOUD_KERNEL" "$LAB_CLOUD_MODULES" "$E2E_WORK/ov$i.txt" overlay --rootfs "$w/rw.img" --overlay &
  pids+=($!)
done
for i in 1 2 3; do
  status=0; wait "${pids[$((i - 1))]}" || status=$?
  show "$E2E_WORK/ov$i.txt"
  check "overlay VM $i: powered off" test "$status" = 0
  check "overlay VM $i: root is an overlay" grep -q "rootfstype=overlay" "$E2E_WORK/ov$i.txt"
  check "overlay VM $i: sees the base's data and can write" grep -q "overlay=scratch" "$E2E_WORK/ov$i.txt"
done
check "overlay: the base image is unchanged" test "$(md5sum <"$w/rw.img")" = "$before"
check "overlay: the VMs' files are not in the base" \
  bash -c "! debugfs -R 'stat /overlay.txt' '$w/rw.img' 2>&1 | grep -q 'Inode:'"

# Persistent qcow2 overlay: created and formatted on first use, keeps writes across boots.
status=0; vm "$LAB_CLOUD_KERNEL" "$LAB_CLOUD_MODULES" "$out" overlay --rootfs "$w/rw.img" --overlay="$w/vm1.qcow2" || status=$?
show "$out"
check "qcow2 overlay: created and used" grep -q "overlay=scratch" "$out"
check "qcow2 overlay: qemu-img check is clean" qemu-img check -q "$w/vm1.qcow2"
status=0; vm "$LAB_CLOUD_KERNEL" "$LAB_CLOUD_MODULES" "$out" read-overlay --rootfs "$w/rw.img" --overlay="$w/vm1.qcow2" || status=$?
show "$out"
check "qcow2 overlay: the write survives a reboot" grep -q "overlayfile=scratch" "$out"
check "qcow2 overlay: the base image is still unchanged" test "$(md5sum <"$w/rw.img")" = "$before"

# --overlay=auto: a temporary qcow2 under ~/.clone/overlays, gone after exit.
rm -rf "$HOME/.clone/overlays"
status=0; vm "$LAB_CLOUD_KERNEL" "$LAB_CLOUD_MODULES" "$out" overlay --rootfs "$w/rw.img" --overlay=auto || status=$?
check "auto overlay: booted and wrote" grep -q "overlay=scratch" "$out"
check "auto overlay: removed at exit" test -z "$(ls -A "$HOME/.clone/overlays" 2>/dev/null)"

# Bad input: a missing modules directory is a clear error before anything boots.
status=0
"$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --rootfs "$w/rw.img" --modules /nonexistent </dev/null >"$out" 2>"$out.err" || status=$?
check "rootfs: a missing modules directory is reported" grep -q "modules.dep" "$out.err"
check "rootfs: ... with status 1" test "$status" = 1

rm -rf "$w"
e2e_finish
