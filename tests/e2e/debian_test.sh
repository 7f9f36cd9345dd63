#!/usr/bin/env bash
# A real distro: `clone rootfs create --distro debian` (debootstrap, needs Debian's mirror and
# root) builds a bookworm image, and `clone run --rootfs` boots it through systemd to a login
# prompt on the serial console, with the hostname rootfs create wrote.
source "$(dirname "$0")/lib.sh"

e2e_prepare() { e2e_debian_image "$E2E_WORK/debian.img"; }
e2e_enter_lab "$0" "$@"

out=$E2E_WORK/console.txt
"$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --modules "$LAB_CLOUD_MODULES" --rootfs "$E2E_WORK/debian.img" \
  --mem-mb 512 --cmdline "console=ttyS0 quiet panic=-1" </dev/null >"$out" 2>"$out.err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q "login:" "$out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
check "debian: systemd reached a login prompt on ttyS0" grep -q "debian-e2e login:" "$out"
kill -TERM "$pid" 2>/dev/null || true
status=0
wait "$pid" || status=$?
check "debian: SIGTERM stops the VM cleanly (143)" test "$status" = 143
if ((E2E_FAILURES > 0)); then tail -20 "$out"; cat "$out.err"; fi
e2e_finish
