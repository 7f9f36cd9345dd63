#!/bin/sh
# init-report.sh — /init for test guests (see tests/guest/mkinitrd). Runs under busybox sh.
#
# Prints on the console one line
#   CLONE-REPORT nproc=<N> memtotal_kb=<N> time=<unix s> acpi_errors=<N> madt_cpus=<N>
# then the marker line CLONE-INIT-DONE, then acts on the kernel parameter
#   clone.action=poweroff (default) | reboot | wait (sleep forever) | shell (console shell)
#
# acpi_errors: dmesg lines matching 'ACPI Error|ACPI BIOS Error' (each is also echoed first,
#   prefixed 'CLONE-ACPI-ERROR: ').
# madt_cpus: the 'ACPI: LAPIC (... enabled)' lines if the kernel logged them (it does only with
#   dynamic debug); otherwise, if the kernel took its SMP configuration from the MADT, the number
#   of CPUs in /sys/devices/system/cpu/present; 0 if the kernel found no MADT.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Only if the kernel found no /dev/console in the initrd: take the console now.
[ -t 1 ] || exec </dev/console >/dev/console 2>&1

count_cpu_list() { # "0-3,5" -> 5
  n=0
  old_ifs=$IFS
  IFS=,
  for r in $1; do
    case $r in
      *-*) n=$((n + ${r#*-} - ${r%-*} + 1)) ;;
      '') ;;
      *) n=$((n + 1)) ;;
    esac
  done
  IFS=$old_ifs
  echo "$n"
}

log=$(dmesg 2>/dev/null)

nproc=$(grep -c '^processor' /proc/cpuinfo)
memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
now=$(date +%s)

acpi_errors=$(printf '%s\n' "$log" | grep -cE 'ACPI Error|ACPI BIOS Error')
if [ "$acpi_errors" -gt 0 ]; then
  printf '%s\n' "$log" | grep -E 'ACPI Error|ACPI BIOS Error' | sed 's/^/CLONE-ACPI-ERROR: /'
fi

madt_cpus=$(printf '%s\n' "$log" | grep 'ACPI: LAPIC (' | grep -c 'enabled')
if [ "$madt_cpus" -eq 0 ]; then
  if printf '%s\n' "$log" | grep -q 'Using ACPI (MADT) for SMP configuration'; then
    madt_cpus=$(count_cpu_list "$(cat /sys/devices/system/cpu/present 2>/dev/null)")
  fi
fi

echo "CLONE-REPORT nproc=$nproc memtotal_kb=$memtotal_kb time=$now acpi_errors=$acpi_errors madt_cpus=$madt_cpus"
echo "CLONE-INIT-DONE"

action=poweroff
read -r cmdline </proc/cmdline
for p in $cmdline; do
  case $p in
    clone.action=*) action=${p#clone.action=} ;;
  esac
done

case $action in
  poweroff) poweroff -f ;;
  reboot) reboot -f ;;
  wait) while :; do sleep 3600; done ;;
  shell) exec setsid cttyhack sh ;;
  *)
    echo "init-report: unknown clone.action=$action, powering off"
    poweroff -f
    ;;
esac
# poweroff -f does not return; if it ever fails, do not let init exit (kernel panic).
while :; do sleep 3600; done
