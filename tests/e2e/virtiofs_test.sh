#!/usr/bin/env bash
# virtio-fs end to end: a stock Debian kernel (fuse.ko + virtiofs.ko) mounts two host directories
# shared with `clone run --shared-dir` (one read-only), served by Clone's in-process FUSE server:
# reads a host file, writes files the host sees, mkdir/rename/unlink/symlink/readdir, an 8 MiB
# file checksummed both ways (timed), the read-only share refuses writes, symlinks pointing out of
# the share do not reach host files outside it. Then the VM is snapshotted with the share mounted
# and restored (same directory) and forked with `--shared-dir NEWDIR:TAG`: the guests keep reading
# and writing, the fork in its new directory only. CLI errors (missing directory, bad/duplicate
# tag, unknown tag on fork) are checked too.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_CLOUD_MODULES" "$E2E_WORK/modules" virtio_mmio vmw_vsock_virtio_transport virtiofs
  e2e_initrd "$E2E_WORK/fs.cpio.gz" "$E2E_ROOT/tests/guest/init-virtiofs.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-fs-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-fs-templates
top=/tmp/clone-e2e-fs  # the shared directories live in L1's own file system, not on the 9p share
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR" "$top"
mkdir -p "$top/share" "$top/ro" "$top/new"
echo "hello from the host $RANDOM" >"$top/share/hello.txt"
echo "read-only content" >"$top/ro/fixed.txt"
echo "outside-secret" >"$top/secret"
ln -s ../secret "$top/share/rel-escape"
ln -s "$top/secret" "$top/share/abs-escape"
head -c $((8 << 20)) /dev/urandom >"$top/share/big.bin"
host_big=$(sha256sum <"$top/share/big.bin" | cut -d' ' -f1)
cmdline="console=ttyS0 quiet panic=-1 clone.fs=myfs:/mnt/fs,rofs:/mnt/ro"
gx() { "$CLONE_BIN" exec --vm-id "$1" --timeout 60 -- sh -c "$2" 2>>"$E2E_WORK/exec.err"; }

# --- CLI errors, before any VM ---
usage() { # usage EXPECTED-TEXT ARGS...: clone run fails (status 1 or 2) and says EXPECTED-TEXT
  local text=$1 status=0
  shift
  "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/fs.cpio.gz" "$@" </dev/null >/dev/null 2>"$E2E_WORK/usage.err" || status=$?
  [[ $status != 0 ]] && grep -q -- "$text" "$E2E_WORK/usage.err"
}
check "run: a missing directory is refused" usage "does not exist" --shared-dir "$top/nope:t"
check "run: a file is not a directory" usage "is not a directory" --shared-dir "$top/share/hello.txt:t"
check "run: a bad tag is refused" usage "may only use" --shared-dir "$top/share:bad/tag"
check "run: a too-long tag is refused" usage "1 to 36" --shared-dir "$top/share:$(printf 'x%.0s' {1..37})"
check "run: a duplicate tag is refused" usage "used twice" --shared-dir "$top/share:t" --shared-dir "$top/ro:t"
check "run: HOST:TAG is required" usage "expected HOST:TAG" --shared-dir "$top/share"

# --- boot with two shares ---
id=$("$CLONE_BIN" run -d --name fsvm --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/fs.cpio.gz" --mem-mb 256 \
  --shared-dir "$top/share:myfs" --shared-dir "$top/ro:rofs:ro" --cmdline "$cmdline" 2>"$E2E_WORK/run.err") || true
cat "$E2E_WORK/run.err"
check "VM with --shared-dir started" test "$id" = fsvm
check "agent reachable" wait_agent fsvm
console=$CLONE_RUNTIME_DIR/vms/fsvm/console.log
check "guest mounted myfs (mount -t virtiofs)" grep -q "CLONE-FS mounted myfs on /mnt/fs" "$console"
check "guest mounted rofs" grep -q "CLONE-FS mounted rofs on /mnt/ro" "$console"
check "modules loaded" bash -c "! grep -q 'insmod .* failed' '$console'"
check "/proc/mounts shows virtiofs" bash -c "'$CLONE_BIN' exec --vm-id fsvm -- cat /proc/mounts | grep -q '^myfs /mnt/fs virtiofs'"

check "guest reads the host's file" test "$(gx fsvm 'cat /mnt/fs/hello.txt')" = "$(cat "$top/share/hello.txt")"
gx fsvm 'echo "written by the guest" > /mnt/fs/from-guest.txt' || true
check "host sees the guest's new file at once" test "$(cat "$top/share/from-guest.txt" 2>/dev/null)" = "written by the guest"
gx fsvm 'echo appended >> /mnt/fs/from-guest.txt && sync' || true
check "host sees the append after the guest's sync" test "$(tail -1 "$top/share/from-guest.txt" 2>/dev/null)" = appended
gx fsvm 'mkdir /mnt/fs/dir && echo x > /mnt/fs/dir/a && mv /mnt/fs/dir/a /mnt/fs/dir/b && ln -s dir/b /mnt/fs/link && echo y > /mnt/fs/gone && rm /mnt/fs/gone' || true
check "mkdir + rename reach the host" test "$(cat "$top/share/dir/b" 2>/dev/null)" = x
check "the renamed-away name is gone" test ! -e "$top/share/dir/a"
check "symlink made by the guest" test "$(readlink "$top/share/link")" = dir/b
check "unlink reaches the host" test ! -e "$top/share/gone"
check "guest reads through its symlink" test "$(gx fsvm 'cat /mnt/fs/link')" = x
listing=$(gx fsvm 'ls -a /mnt/fs | tr "\n" " "') || true
echo "guest ls -a /mnt/fs: $listing"
check "readdir lists the share" test "$listing" = "$(ls -a "$top/share" | LC_ALL=C sort | tr '\n' ' ')"
echo "host edit" >"$top/share/host-new.txt"
check "guest sees a file the host created" test "$(gx fsvm 'cat /mnt/fs/host-new.txt')" = "host edit"
check "guest stat: size of the host file" test "$(gx fsvm 'stat -c %s /mnt/fs/big.bin')" = $((8 << 20))

# 8 MiB both ways (timed from the host; an empty exec's time is subtracted).
t0=$(now); gx fsvm true; base=$(since "$t0")
t0=$(now); guest_big=$(gx fsvm 'sha256sum /mnt/fs/big.bin' | cut -d' ' -f1) || true; read_s=$(since "$t0")
check "8 MiB host file: guest sha256 matches" test "$guest_big" = "$host_big"
gx fsvm 'head -c 8388608 /dev/urandom > /tmp/big && sha256sum /tmp/big > /tmp/big.sum' || true
t0=$(now); gx fsvm 'dd if=/tmp/big of=/mnt/fs/guest-big.bin bs=1M 2>/dev/null && sync' || true; write_s=$(since "$t0")
check "8 MiB guest file: host sha256 matches" test "$(sha256sum <"$top/share/guest-big.bin" | cut -d' ' -f1)" = "$(gx fsvm 'cut -d" " -f1 /tmp/big.sum')"
echo "8 MiB: guest read+sha256 ${read_s} s, guest write (dd bs=1M + sync) ${write_s} s; an empty exec takes ${base} s"

# Read-only share.
check "ro share: reads work" test "$(gx fsvm 'cat /mnt/ro/fixed.txt')" = "read-only content"
check "ro share: creating a file fails" bash -c "! '$CLONE_BIN' exec --vm-id fsvm -- sh -c 'echo x > /mnt/ro/new.txt' 2>/dev/null"
check "ro share: overwriting fails" bash -c "! '$CLONE_BIN' exec --vm-id fsvm -- sh -c 'echo x > /mnt/ro/fixed.txt' 2>/dev/null"
check "ro share: rm fails" bash -c "! '$CLONE_BIN' exec --vm-id fsvm -- rm -f /mnt/ro/fixed.txt 2>/dev/null"
check "ro share: the host files are unchanged" test "$(cat "$top/ro/fixed.txt")" = "read-only content" -a ! -e "$top/ro/new.txt"

# Escape attempts: links are resolved by the guest in its own namespace, never by the server.
out=$(gx fsvm 'cat /mnt/fs/rel-escape /mnt/fs/abs-escape /mnt/fs/../secret 2>/dev/null; cat /mnt/fs/dir/../../secret 2>/dev/null; true') || true
check "symlinks out of the share do not reach the host's files" bash -c "! grep -q outside-secret <<<'$out'"
check "the guest sees the escape link as a link" test "$(gx fsvm 'readlink /mnt/fs/rel-escape')" = ../secret

# --- snapshot with the share mounted (a file held open), restore, fork into a new directory ---
gx fsvm 'exec 3</mnt/fs/hello.txt; (sleep 100000 <&3 >/dev/null 2>&1 &); true' || true
t0=$(now)
"$CLONE_BIN" snapshot --vm-id fsvm --name fs1 >"$E2E_WORK/snap.out" 2>&1 || true
echo "snapshot: $(cat "$E2E_WORK/snap.out") ($(since "$t0") s)"
check "snapshot of a VM with a mounted share" test -f "$CLONE_TEMPLATES_DIR/fs1/config"
check "the snapshot records the shared directories" grep -q '"tag": "myfs"' "$CLONE_TEMPLATES_DIR/fs1/config"
check "the source keeps serving after the snapshot" test "$(gx fsvm 'cat /mnt/fs/dir/b')" = x
check "source stopped" stop_vm fsvm

id=$("$CLONE_BIN" restore --snapshot fs1 --name r1 -d 2>"$E2E_WORK/r1.err") || true
cat "$E2E_WORK/r1.err"
check "restore started" test "$id" = r1
check "restored agent reachable" wait_agent r1
check "restored guest reads the share" test "$(gx r1 'cat /mnt/fs/hello.txt')" = "$(cat "$top/share/hello.txt")"
check "restored guest reads a file it had not looked up" test "$(gx r1 'cat /mnt/fs/host-new.txt')" = "host edit"
gx r1 'echo after-restore > /mnt/fs/restored.txt && sync' || true
check "restored guest writes into the recorded directory" test "$(cat "$top/share/restored.txt" 2>/dev/null)" = after-restore
check "restored guest: big file still intact" test "$(gx r1 'sha256sum /mnt/fs/guest-big.bin' | cut -d' ' -f1)" = "$(sha256sum <"$top/share/guest-big.bin" | cut -d' ' -f1)"
check "restored stopped" stop_vm r1

vms_before=$(vm_count)
status=0; "$CLONE_BIN" fork --template fs1 --shared-dir "$top/new:other" </dev/null >/dev/null 2>"$E2E_WORK/bad-tag.err" || status=$?
check "fork: a tag the template lacks is refused" bash -c "[[ $status != 0 ]] && grep -q \"no shared directory tagged 'other'\" '$E2E_WORK/bad-tag.err'"
status=0; "$CLONE_BIN" fork --template fs1 --shared-dir "$top/missing:myfs" </dev/null >/dev/null 2>"$E2E_WORK/bad-dir.err" || status=$?
check "fork: a missing new directory is refused" bash -c "[[ $status != 0 ]] && grep -q 'does not exist' '$E2E_WORK/bad-dir.err'"
check "refused forks leave no VM behind" test "$(vm_count)" = "$vms_before"

cp -a "$top/share/." "$top/new/"
echo "only in the new directory" >"$top/new/new-only.txt"
id=$("$CLONE_BIN" fork -d --template fs1 --name f1 --shared-dir "$top/new:myfs" 2>"$E2E_WORK/f1.err") || true
cat "$E2E_WORK/f1.err"
check "fork --shared-dir NEWDIR:myfs started" test "$id" = f1
check "fork agent reachable" wait_agent f1
check "fork reads a file only the new directory has" test "$(gx f1 'cat /mnt/fs/new-only.txt')" = "only in the new directory"
gx f1 'echo from-the-fork > /mnt/fs/fork.txt && mkdir /mnt/fs/forkdir && sync' || true
check "fork writes into the new directory" test "$(cat "$top/new/fork.txt" 2>/dev/null)" = from-the-fork -a -d "$top/new/forkdir"
check "the template's directory is untouched by the fork" test ! -e "$top/share/fork.txt"
check "fork: the ro share is still read-only" bash -c "! '$CLONE_BIN' exec --vm-id f1 -- sh -c 'echo x > /mnt/ro/x' 2>/dev/null"
check "fork stopped" stop_vm f1
# --- --seccomp: the fs worker confines itself to its role and still serves (and snapshots) ---
id=$("$CLONE_BIN" run -d --seccomp --name fssec --kernel "$LAB_CLOUD_KERNEL" --initrd "$E2E_WORK/fs.cpio.gz" --mem-mb 256 \
  --shared-dir "$top/share:myfs" --shared-dir "$top/ro:rofs:ro" --cmdline "$cmdline" 2>"$E2E_WORK/sec.err") || true
cat "$E2E_WORK/sec.err"
check "confined VM with shares started" test "$id" = fssec
check "confined VM: agent reachable" wait_agent fssec
pid=$(pid_of fssec || true)
fs_task=$(grep -l '^clone-fs$' /proc/"${pid:-0}"/task/*/comm 2>/dev/null | head -1) || true
check "confined VM: the clone-fs thread runs under a seccomp filter" grep -q '^Seccomp:[[:space:]]*2' "${fs_task%/comm}/status"
gx fssec 'mkdir /mnt/fs/sec && echo s > /mnt/fs/sec/f && mv /mnt/fs/sec/f /mnt/fs/sec/g && ln -s g /mnt/fs/sec/l && rm /mnt/fs/sec/l && touch -d "2020-01-01 00:00" /mnt/fs/sec/g && chmod 600 /mnt/fs/sec/g && ls /mnt/fs/sec >/dev/null && df /mnt/fs >/dev/null' || true
check "confined VM: mkdir/write/rename/symlink/unlink/utimes/chmod reach the host" test "$(cat "$top/share/sec/g" 2>/dev/null)" = s -a ! -e "$top/share/sec/l" -a "$(stat -c %a "$top/share/sec/g" 2>/dev/null)" = 600
check "confined VM: 8 MiB read intact" test "$(gx fssec 'sha256sum /mnt/fs/big.bin' | cut -d' ' -f1)" = "$host_big"
"$CLONE_BIN" snapshot --vm-id fssec --name fs2 >/dev/null 2>"$E2E_WORK/snap2.err" || true
check "confined VM: snapshot with the share mounted" test -f "$CLONE_TEMPLATES_DIR/fs2/config"
check "confined VM: still serving after the snapshot" test "$(gx fssec 'cat /mnt/fs/sec/g')" = s
# Unloading the driver resets the device through a status write on a vCPU thread; the server's fds
# are closed on the fs worker then, not on the vCPU, whose role has no close(2).
gx fssec 'umount /mnt/fs /mnt/ro && rmmod virtiofs' || true
check "confined VM: a device reset (umount + rmmod virtiofs) leaves the VM running" test "$(gx fssec 'echo alive')" = alive
check "confined VM: the process is alive (no forbidden syscall)" kill -0 "${pid:-0}"
check "confined VM stopped" stop_vm fssec
if [[ $E2E_FAILURES -gt 0 ]]; then
  for f in "$CLONE_RUNTIME_DIR"/vms/*/console.log; do echo "== $f"; tail -20 "$f"; done 2>/dev/null
  tail -20 "$E2E_WORK/exec.err"
fi
e2e_finish
