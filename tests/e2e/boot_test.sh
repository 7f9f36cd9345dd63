#!/usr/bin/env bash
# Boots both stock Debian kernels (generic and cloud) with 1, 2 and 4 vCPUs on a busybox initrd and
# checks what the guest reports: CPUs, memory, clock, ACPI errors, MADT CPUs. Then poweroff/reboot
# exit statuses, SIGTERM with terminal restore, measured boot (--kernel-sha256), PVH (ELF) entry.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_initrd "$E2E_WORK/report.cpio.gz" "$E2E_ROOT/tests/guest/init-report.sh"
  # An ELF vmlinux with a PVH note, unpacked from the generic bzImage's compressed payload.
  "$E2E_ROOT/tests/guest/extract-vmlinux" "$LAB_GENERIC_KERNEL" "$E2E_WORK/vmlinux" 2>/dev/null || true
}
e2e_enter_lab "$0" "$@"

initrd=$E2E_WORK/report.cpio.gz
mem_mb=256
out=$E2E_WORK/out.txt

boot() { # boot KERNEL VCPUS [extra cmdline] -> status in $status, console in $out
  local kernel=$1 vcpus=$2 extra=${3:-}
  status=0
  boot_started=$(date +%s)
  timeout 180 "$CLONE_BIN" run --kernel "$kernel" --initrd "$initrd" --mem-mb "$mem_mb" --vcpus "$vcpus" \
    --cmdline "console=ttyS0 quiet panic=-1 $extra" </dev/null >"$out" 2>"$out.err" || status=$?
  boot_ended=$(date +%s)
}

check_report() { # check_report LABEL VCPUS
  local label=$1 vcpus=$2 nproc mem t now acpi madt
  nproc=$(report_field "$out" nproc)
  mem=$(report_field "$out" memtotal_kb)
  t=$(report_field "$out" time)
  acpi=$(report_field "$out" acpi_errors)
  madt=$(report_field "$out" madt_cpus)
  now=$(date +%s)
  echo "  $label: status=$status nproc=$nproc memtotal_kb=$mem time=$t (host $now) acpi_errors=$acpi madt_cpus=$madt"
  check "$label: powered off with status 0" test "$status" = 0
  check "$label: nproc = $vcpus" test "${nproc:-x}" = "$vcpus"
  check "$label: MADT CPUs = $vcpus" test "${madt:-x}" = "$vcpus"
  check "$label: MemTotal within 70-100% of $mem_mb MiB" \
    test "${mem:-0}" -gt $((mem_mb * 1024 * 7 / 10)) -a "${mem:-0}" -le $((mem_mb * 1024))
  # The guest read its clock while Clone ran: it must fall inside that window (1 s granularity).
  check "$label: guest clock within the host's run window" \
    test "${t:-0}" -ge $((boot_started - 1)) -a "${t:-0}" -le $((boot_ended + 1))
  check "$label: no ACPI errors" test "${acpi:-x}" = 0
  if [[ $status != 0 || -z $nproc ]]; then
    echo "--- console:"; tail -30 "$out"; echo "--- stderr:"; tail -5 "$out.err"
  fi
}

for flavour in cloud generic; do
  if [[ $flavour == cloud ]]; then kernel=$LAB_CLOUD_KERNEL; else kernel=$LAB_GENERIC_KERNEL; fi
  for vcpus in 1 2 4; do
    boot "$kernel" "$vcpus"
    check_report "$flavour kernel, $vcpus vCPU" "$vcpus"
  done
done

# reboot -> distinct status 3, with the reason printed.
boot "$LAB_CLOUD_KERNEL" 1 clone.action=reboot
check "reboot: exit status 3" test "$status" = 3
check "reboot: reason printed" grep -q "requested a reboot" "$out.err"

# reboot through the i8042 reset line (the kernel's "reboot=k" method) -> the same status 3.
boot "$LAB_CLOUD_KERNEL" 1 "clone.action=reboot reboot=k"
check "reboot via i8042: exit status 3" test "$status" = 3

# SIGTERM while the guest runs, on a terminal (tmux): clean exit 143, terminal restored.
sock=/tmp/clone-e2e-tmux.sock  # 9p (the shared repo) cannot hold sockets
rm -f "$E2E_WORK/tty.status" "$E2E_WORK/stty.after"
tmux -S "$sock" new-session -d -x 120 -y 30 \
  "stty -a > $E2E_WORK/stty.before; $CLONE_BIN run --kernel $LAB_CLOUD_KERNEL --initrd $initrd --mem-mb $mem_mb \
   --cmdline 'console=ttyS0 quiet panic=-1 clone.action=wait' > $E2E_WORK/tty.out 2>$E2E_WORK/tty.err; \
   echo \$? > $E2E_WORK/tty.status; stty -a > $E2E_WORK/stty.after; sleep 30"
for _ in $(seq 1 120); do grep -q CLONE-INIT-DONE "$E2E_WORK/tty.out" 2>/dev/null && break; sleep 1; done
check "sigterm: guest reached init under a terminal" grep -q CLONE-INIT-DONE "$E2E_WORK/tty.out"
# Anchor on the binary: the tmux shell's own command line also contains "clone run".
pkill -TERM -f "^$CLONE_BIN run --kernel" || true
for _ in $(seq 1 30); do [[ -s $E2E_WORK/tty.status ]] && break; sleep 1; done
check "sigterm: exit status 143" test "$(cat "$E2E_WORK/tty.status" 2>/dev/null)" = 143
check "sigterm: reason printed" grep -q "stopped by SIGTERM" "$E2E_WORK/tty.err"
check "sigterm: terminal settings restored" cmp -s "$E2E_WORK/stty.before" "$E2E_WORK/stty.after"
tmux -S "$sock" kill-server 2>/dev/null || true

# Measured boot.
sha=$(sha256sum "$LAB_CLOUD_KERNEL" | cut -d' ' -f1)
status=0
"$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --kernel-sha256 "$(sha256sum /dev/null | cut -d" " -f1)" \
  </dev/null >"$out" 2>"$out.err" || status=$?
check "wrong --kernel-sha256: refused with status 1" test "$status" = 1
check "wrong --kernel-sha256: says so" grep -q "refusing to boot" "$out.err"
check "wrong --kernel-sha256: guest never ran" test ! -s "$out"
status=0
timeout 180 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb "$mem_mb" --kernel-sha256 "$sha" \
  </dev/null >"$out" 2>"$out.err" || status=$?
check "right --kernel-sha256: boots" grep -q CLONE-INIT-DONE "$out"

# PVH entry with an ELF vmlinux.
if [[ -s $E2E_WORK/vmlinux ]]; then
  boot "$E2E_WORK/vmlinux" 2
  check_report "ELF vmlinux via PVH, 2 vCPU" 2
else
  fail "could not extract an ELF vmlinux from $LAB_GENERIC_KERNEL"
fi

e2e_finish
