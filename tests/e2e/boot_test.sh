#!/usr/bin/env bash
# Boots both stock Debian kernels (generic and cloud) with 1, 2 and 4 vCPUs on a busybox initrd and
# checks what the guest reports: CPUs, memory, clock, ACPI errors, MADT CPUs. Then poweroff/reboot
# exit statuses, SIGTERM with terminal restore, measured boot (--kernel-sha256), PVH (ELF) entry.
# Host check (#11, in the same lab boot): `clone check` in L1 (hardware-assisted KVM as far as it can
# tell) exits 0 and lists what Clone uses; a fake PVM host is refused in under a second; a guest
# that spins without a single exit to Clone and prints nothing is reported.
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_initrd "$E2E_WORK/report.cpio.gz" "$E2E_ROOT/tests/guest/init-report.sh"
  # An ELF vmlinux with a PVH note, unpacked from the generic bzImage's compressed payload.
  "$E2E_ROOT/tests/guest/extract-vmlinux" "$LAB_GENERIC_KERNEL" "$E2E_WORK/vmlinux" 2>/dev/null || true
  # A "kernel" whose 64-bit entry is `jmp .`: it never exits to the VMM and never prints.
  printf '.globl _start\n_start: jmp _start\n' >"$E2E_WORK/spin.s"
  as -o "$E2E_WORK/spin.o" "$E2E_WORK/spin.s" && ld -N -Ttext=0x200000 -e _start -o "$E2E_WORK/spin.elf" "$E2E_WORK/spin.o" 2>/dev/null
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

# --- Host check ---
status=0
"$CLONE_BIN" check >"$out" 2>"$out.err" || status=$?
cat "$out"
check "clone check in L1: exit 0 (stock guests run)" test "$status" = 0
for item in kvm vhost-net vhost-vsock ksm userfaultfd; do
  check "clone check lists $item" grep -qE "^  [a-z]+ +$item " "$out"
done
check "clone check: kvm is AMD SVM, hardware-assisted" grep -qE "^  ok +kvm +.*AMD SVM, hardware-assisted" "$out"
status=0
"$CLONE_BIN" check --json >"$out" 2>"$out.err" || status=$?
check "clone check --json: stock_guests true" grep -q '"stock_guests": true' "$out"

# A fake PVM host (the tree host/check.h reads, under CLONE_HOST_ROOT): a stock kernel is refused
# at once, although this L1's /dev/kvm would run it.
fake=$E2E_WORK/pvm-host
mkdir -p "$fake/proc" "$fake/dev" "$fake/sys/module/kvm_pvm"
printf 'processor\t: 0\nflags\t\t: fpu lm hypervisor\n' >"$fake/proc/cpuinfo"
: >"$fake/dev/kvm"
status=0
t0=$EPOCHREALTIME
"$CLONE_BIN" --version >/dev/null
base_ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
t0=$EPOCHREALTIME
CLONE_HOST_ROOT=$fake timeout 30 "$CLONE_BIN" run --kernel "$LAB_CLOUD_KERNEL" --initrd "$initrd" --mem-mb "$mem_mb" \
  </dev/null >"$out" 2>"$out.err" || status=$?
ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
echo "  PVM host: status $status after $ms ms (clone --version: $base_ms ms): $(cat "$out.err")"
check "PVM host: clone run exits 1" test "$status" = 1
# Under TCG the binary's own start-up (clone --version) is 20-50x hardware's: refused within 1 s of it.
check "PVM host: refused within 1 s (beyond clone's start-up)" test "$((ms - base_ms))" -lt 1000
check "PVM host: names the reason" grep -q "this host's KVM is PVM (no AMD SVM or Intel VMX): it runs only PVM-enabled guest kernels; see 'clone check'" "$out.err"
check "PVM host: the guest never ran" test ! -s "$out"
status=0
CLONE_HOST_ROOT=$fake "$CLONE_BIN" check >"$out" 2>&1 || status=$?
check "PVM host: clone check exits 1" test "$status" = 1
check "PVM host: clone check names PVM" grep -q "PVM" "$out"

# A spinning guest: no exit to Clone, no output -> one warning naming where the vCPU is.
if [[ -s $E2E_WORK/spin.elf ]]; then
  status=0
  CLONE_STALL_WARN_SECONDS=3 timeout -s INT 8 "$CLONE_BIN" run --kernel "$E2E_WORK/spin.elf" --mem-mb 64 \
    </dev/null >"$out" 2>"$out.err" || status=$?
  echo "  spinning guest: $(grep -m1 'no VM exit' "$out.err")"
  check "spinning guest: reported" grep -q "vCPU 0 has made no VM exit to Clone for 3 s and the guest has printed nothing" "$out.err"
  check "spinning guest: the report says where" grep -q "rip 0x200000 in 64-bit long mode" "$out.err"
  check "spinning guest: reported once" test "$(grep -c 'no VM exit' "$out.err")" = 1
else
  fail "could not assemble the spinning guest (as/ld from binutils)"
fi
# A normal boot is not reported with the default watch (20 s). A much closer watch would catch the
# bzImage decompressor, which makes no exit for seconds under TCG (a fraction of one on hardware).
boot "$LAB_CLOUD_KERNEL" 1
check "normal boot: powered off" test "$status" = 0
check "normal boot: no stall warning" bash -c "! grep -q 'no VM exit' '$out.err'"

e2e_finish
