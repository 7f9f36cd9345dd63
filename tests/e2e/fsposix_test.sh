#!/usr/bin/env bash
# POSIX conformance of virtio-fs, Clone against QEMU + virtiofsd in the same lab boot: the suite
# tests/guest/fsposix.c (built static on the host, put in a busybox initrd) runs as root in a stock
# Debian guest kernel (it forks unprivileged users itself) on a shared directory: once on the lab
# host's own directory (the reference), once in `clone run --seccomp --shared-dir`, once in
# `qemu-system-x86_64 -accel kvm` with Debian's /usr/lib/qemu/virtiofsd (-o xattr, posix_acl, flock,
# posix_lock: everything it can do). Same kernel, initrd and host file system (ext4 on a loop
# device, mounted nodev, so that guests may make device nodes; ext4 has POSIX ACLs). While a
# guest runs, `fsposix hostside` runs on the lab host: it checks that the guest's flock and record
# lock are host locks and holds its own for the guest to see. Both pass counts are printed; the
# test fails when Clone's is lower than virtiofsd's, when Clone's locks are not host locks, or when
# either run crashes or hangs. A short extra boot checks `--shared-dir HOST:TAG:squash-root`: guest
# root is nobody on the host.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  gcc -static -O1 -Wall -Wextra -Werror -o "$E2E_WORK/fsposix" "$E2E_ROOT/tests/guest/fsposix.c"
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio virtio_pci virtiofs
  e2e_initrd "$E2E_WORK/posix.cpio.gz" "$E2E_ROOT/tests/guest/init-fsposix.sh" \
    "$E2E_WORK/modules:/modules" "$E2E_WORK/fsposix:/fsposix"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-posix-rt
top=/tmp/clone-e2e-posix
rm -rf "$CLONE_RUNTIME_DIR" "$top"
mkdir -p "$top"
initrd=$E2E_WORK/posix.cpio.gz
cmdline="console=ttyS0 quiet panic=-1"

# The shared file system: ext4 (user xattrs, file capabilities) mounted nodev; tmpfs if no loop.
truncate -s 256M /tmp/clone-e2e-posix.img
fs_kind=ext4
if mkfs.ext4 -q -F /tmp/clone-e2e-posix.img && mount -o loop,nodev /tmp/clone-e2e-posix.img "$top"; then
  :
else
  fs_kind=tmpfs
  mount -t tmpfs -o nodev,size=256m tmpfs "$top"
fi
echo "shared file system: $fs_kind (nodev) on $top"
mkdir -p "$top/clone" "$top/qemu"

counts() { # counts FILE: "PASSED FAILED" from the suite's last line, or nothing
  tr -d '\r' <"$1" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1 \2/p' | tail -1
}
hostside_pid=
hostside_start() { # hostside_start DIR OUT: the host process the guest's lock checks talk to
  "$E2E_WORK/fsposix" hostside "$1" >"$2" 2>&1 &
  hostside_pid=$!
}
hostside_stop() { # it ends by itself once the guest is done; a guest that died leaves it waiting
  for _ in $(seq 1 50); do kill -0 "$hostside_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$hostside_pid" 2>/dev/null || true
  wait "$hostside_pid" 2>/dev/null || true
}

# 1. Reference: the suite on the lab host's directory itself.
timeout 120 "$E2E_WORK/fsposix" "$top/reference" >"$E2E_WORK/reference.out" 2>&1 || true
read -r ref_pass ref_fail <<<"$(counts "$E2E_WORK/reference.out")" || true
echo "reference (the lab host's $fs_kind directly): ${ref_pass:-?} passed, ${ref_fail:-?} failed"
grep -a '^FAIL' "$E2E_WORK/reference.out" | sed 's/^/  reference /' || true
rm -rf "$top/reference"

# 2. Clone, confined (--seccomp: the fs worker's allow-list covers the new syscalls).
t0=$(now)
status=0
hostside_start "$top/clone/run" "$E2E_WORK/clone-hostside.out"
timeout 300 "$CLONE_BIN" run --seccomp --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb 256 \
  --shared-dir "$top/clone:posix" --cmdline "$cmdline" </dev/null >"$E2E_WORK/clone.out" 2>"$E2E_WORK/clone.err" || status=$?
echo "clone: exit $status after $(since "$t0") s"
hostside_stop
cat "$E2E_WORK/clone-hostside.out"
read -r clone_pass clone_fail <<<"$(counts "$E2E_WORK/clone.out")" || true
check "clone: the suite ran to the end" grep -aq 'FSPOSIX-END rc=0' "$E2E_WORK/clone.out"
check "clone: the VM powered off (no crash, no hang)" test "$status" = 0
check "clone: a host process sees the guest's flock and record lock" \
  grep -q 'HOSTSIDE saw flock=held fcntl=1:0:100' "$E2E_WORK/clone-hostside.out"
check "clone: the guest's close released them on the host" \
  grep -q 'HOSTSIDE after flock=free fcntl=2' "$E2E_WORK/clone-hostside.out"

# 2b. :squash-root: guest root is nobody on the host (a root-owned file in a sticky directory).
mkdir -p "$top/squash"
chmod 1777 "$top/squash"
echo host >"$top/squash/hostroot.txt"
chmod 644 "$top/squash/hostroot.txt"
status=0
timeout 120 "$CLONE_BIN" run --seccomp --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb 256 \
  --shared-dir "$top/squash:posix:squash-root" --cmdline "$cmdline fsposix.mode=squash" \
  </dev/null >"$E2E_WORK/squash.out" 2>"$E2E_WORK/squash.err" || status=$?
squash() { tr -d '\r' <"$E2E_WORK/squash.out" | sed -n "s/^FSPOSIX-SQUASH $1=//p"; }
echo "squash-root: exit $status, create=$(squash create) chmod=$(squash chmod) rm=$(squash rm)"
check "squash-root: guest root's new file is nobody's on the host" \
  test "$(squash create)" = 0 -a "$(stat -c %u:%g "$top/squash/by-root" 2>/dev/null)" = 65534:65534
check "squash-root: guest root cannot chmod a host root file" \
  test "$(squash chmod)" != 0 -a "$(stat -c %a "$top/squash/hostroot.txt")" = 644
check "squash-root: nor unlink it from a sticky directory" test "$(squash rm)" != 0 -a -f "$top/squash/hostroot.txt"

# 3. QEMU + virtiofsd on a directory of the same file system.
sock=/tmp/clone-e2e-posix-vfsd.sock
rm -f "$sock"
virtiofsd=/usr/lib/qemu/virtiofsd
check "virtiofsd is installed ($virtiofsd)" test -x "$virtiofsd"
"$virtiofsd" --socket-path="$sock" -o source="$top/qemu" -o xattr -o posix_acl -o flock -o posix_lock \
  -o cache=auto -o sandbox=chroot \
  >"$E2E_WORK/virtiofsd.log" 2>&1 &
vfsd=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
t0=$(now)
status=0
hostside_start "$top/qemu/run" "$E2E_WORK/qemu-hostside.out"
timeout 300 qemu-system-x86_64 -accel kvm -cpu host -M pc -m 256 -smp 1 -nodefaults -no-user-config -no-reboot \
  -display none -serial stdio -kernel "$LAB_CLOUD_KERNEL" -initrd "$initrd" -append "$cmdline" \
  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
  -chardev socket,id=vfs,path="$sock" -device vhost-user-fs-pci,chardev=vfs,tag=posix \
  </dev/null >"$E2E_WORK/qemu.out" 2>"$E2E_WORK/qemu.err" || status=$?
echo "qemu + virtiofsd: exit $status after $(since "$t0") s"
hostside_stop
cat "$E2E_WORK/qemu-hostside.out"
kill "$vfsd" 2>/dev/null || true
wait "$vfsd" 2>/dev/null || true
read -r qemu_pass qemu_fail <<<"$(counts "$E2E_WORK/qemu.out")" || true
check "qemu + virtiofsd: the suite ran to the end" grep -aq 'FSPOSIX-END rc=0' "$E2E_WORK/qemu.out"

echo "== failed assertions"
tr -d '\r' <"$E2E_WORK/clone.out" | grep -a '^FAIL' | sed 's/^/  clone  /' || true
tr -d '\r' <"$E2E_WORK/qemu.out" | grep -a '^FAIL' | sed 's/^/  qemu   /' || true
echo "== POSIX suite (tests/guest/fsposix.c, $fs_kind nodev host directory, Debian $(basename "$LAB_CLOUD_KERNEL") guest):"
printf '  %-28s %5s passed %5s failed\n' "lab host directly" "${ref_pass:-?}" "${ref_fail:-?}" \
  "clone --shared-dir" "${clone_pass:-?}" "${clone_fail:-?}" "qemu + virtiofsd (all -o)" "${qemu_pass:-?}" "${qemu_fail:-?}"
check "clone's pass count (${clone_pass:-none}) is at least virtiofsd's (${qemu_pass:-none})" \
  test "${clone_pass:-0}" -gt 0 -a "${clone_pass:-0}" -ge "${qemu_pass:-0}"

if [[ $E2E_FAILURES -gt 0 ]]; then
  echo "== clone stderr"; tail -20 "$E2E_WORK/clone.err"
  echo "== clone console"; tr -d '\r' <"$E2E_WORK/clone.out" | grep -av '^ok' | tail -20
  echo "== qemu stderr"; tail -10 "$E2E_WORK/qemu.err"
  echo "== virtiofsd"; tail -10 "$E2E_WORK/virtiofsd.log"
  echo "== qemu console"; tr -d '\r' <"$E2E_WORK/qemu.out" | grep -av '^ok' | tail -20
fi
umount "$top" 2>/dev/null || true
rm -f /tmp/clone-e2e-posix.img
e2e_finish
