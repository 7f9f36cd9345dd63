#!/usr/bin/env bash
# VM Generation ID end to end with the stock generic kernel (CONFIG_VMGENID=y): the vmgenid driver
# binds to the DSDT's VGEN device and the always-built evged to GED0; the 16-byte id the guest
# reads at 0x6800 through /dev/mem is random and non-zero; the GED's IOAPIC pin is set up edge /
# active high as its _CRS says, and takes no interrupt at boot. After a snapshot, a VM made from it
# (restore, and fork when this build has it) reads a new id, counted one "ACPI:Ged" interrupt, and
# its kernel logged the fork reseed of its RNG ("crng reseeded due to virtual machine fork"); two
# VMs made from the same template get different ids. (The 6.1 driver emits no uevent; later
# kernels add NEW_VMGENID=1.)
source "$(dirname "$0")/lib.sh"

e2e_prepare() {
  e2e_modules "$LAB_GENERIC_MODULES" "$E2E_WORK/modules" virtio_mmio vsock vmw_vsock_virtio_transport
  e2e_initrd "$E2E_WORK/agent.cpio.gz" "$E2E_ROOT/tests/guest/init-agent.sh" \
    "$E2E_WORK/modules:/modules" "$(dirname "$CLONE_BIN")/clone-agent:/usr/bin/clone-agent"
}
e2e_enter_lab "$0" "$@"

export CLONE_RUNTIME_DIR=/tmp/clone-e2e-vmgenid-rt  # sockets cannot live on the 9p share
export CLONE_TEMPLATES_DIR=/tmp/clone-e2e-vmgenid-templates
rm -rf "$CLONE_RUNTIME_DIR" "$CLONE_TEMPLATES_DIR"
# apic=verbose: the kernel logs how it programs each IOAPIC pin (trigger and polarity).
cmdline="console=ttyS0 quiet panic=-1 apic=verbose"
vmgenid_addr=$((0x6800))
zero_id=00000000000000000000000000000000

guest() { "$CLONE_BIN" exec --vm-id "$@"; }
# The 16 bytes at the VM Generation ID's address, as 32 hex digits.
read_id() {
  guest "$1" -- sh -c "dd if=/dev/mem bs=16 skip=$((vmgenid_addr / 16)) count=1 2>/dev/null | od -An -tx1 | tr -d ' \n'"
}
# The ACPI:Ged line of /proc/interrupts: "IRQ COUNT" (counts summed over the CPU columns).
ged_irq() {
  guest "$1" -- cat /proc/interrupts | awk '/ACPI:Ged/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; sub(":", "", $1); print $1, n }'
}
reseeds() { guest "$1" -- dmesg | grep -c 'crng reseeded due to virtual machine fork' || true; }
is_id() { [[ $1 =~ ^[0-9a-f]{32}$ && $1 != "$zero_id" ]]; }

# Checks a VM made from the template: the drivers still bound, a new id, one GED interrupt, one
# reseed. new_vm_checks ID WHAT OLD_IDS...
new_vm_checks() {
  local vm=$1 what=$2 id ged
  shift 2
  check "$what: the agent answers" wait_agent "$vm"
  id=$(read_id "$vm") || true
  echo "$what: VM Generation ID $id"
  check "$what: the id is 16 non-zero bytes" is_id "$id"
  local old
  for old in "$@"; do check "$what: the id differs from $old" test "$id" != "$old"; done
  ged=$(ged_irq "$vm") || true
  echo "$what: ACPI:Ged irq and count: $ged"
  check "$what: the GED took exactly one interrupt (the generation change)" test "${ged#* }" = 1
  local n
  n=$(reseeds "$vm")
  check "$what: the kernel reseeded its RNG for the VM fork" test "$n" = 1
  if [[ $n != 1 ]]; then guest "$vm" -- dmesg | grep -iE 'vmgenid|ged|crng|random' || true; fi
  check "$what: vmgenid is still bound" bash -c "'$CLONE_BIN' exec --vm-id $vm -- ls /sys/bus/acpi/drivers/vmgenid | grep -q '^CLON0001:00$'"
  LAST_ID=$id
}

# --- the source VM: a fresh boot ---
id=$("$CLONE_BIN" run -d --name vg-src --kernel "$LAB_GENERIC_KERNEL" --initrd "$E2E_WORK/agent.cpio.gz" \
  --mem-mb 256 --cmdline "$cmdline" 2>"$E2E_WORK/src.err") || true
check "source VM started" test "$id" = vg-src
cat "$E2E_WORK/src.err"
check "source agent reachable" wait_agent vg-src
drivers=$(guest vg-src -- ls /sys/bus/acpi/drivers/vmgenid) || true
echo "vmgenid driver: $(tr "\n" " " <<<"$drivers")"
check "vmgenid is bound to VGEN (CLON0001:00)" grep -qx 'CLON0001:00' <<<"$drivers"
ged_driver=$(guest vg-src -- readlink /sys/bus/platform/devices/ACPI0013:00/driver) || true
echo "GED0 driver: $ged_driver"
check "evged (acpi-ged) is bound to GED0 (ACPI0013:00)" grep -q '/drivers/acpi-ged$' <<<"$ged_driver"
src_id=$(read_id vg-src) || true
echo "source VM Generation ID: $src_id"
check "source: the id is 16 non-zero bytes" is_id "$src_id"
ged=$(ged_irq vg-src) || true
guest vg-src -- grep ACPI:Ged /proc/interrupts || true
echo "source: ACPI:Ged irq and count: $ged"
check "source: ACPI:Ged is in /proc/interrupts" test -n "$ged"
check "source: the GED took no interrupt at boot (the pin was masked when the id was written)" test "${ged#* }" = 0
check "source: /proc/interrupts shows GSI 9 edge-triggered" bash -c "'$CLONE_BIN' exec --vm-id vg-src -- grep ACPI:Ged /proc/interrupts | grep -q ' 9-edge '"
routing=$(guest vg-src -- dmesg | grep -E "Preconfigured routing entry \([0-9]+-9 -> IRQ ${ged% *} " || true)
echo "source: $routing"
check "source: the IOAPIC pin 9 is programmed edge, active high (Level:0 ActiveLow:0) as _CRS says" \
  grep -q 'Level:0 ActiveLow:0' <<<"$routing"
check "source: no fork reseed at boot" test "$(reseeds vg-src)" = 0
check "source: no ACPI errors" bash -c "! '$CLONE_BIN' exec --vm-id vg-src -- dmesg | grep -iE 'ACPI (BIOS )?(Error|Warning)|evged.*(fail|error)|vmgenid.*(fail|error)'"

# --- template ---
"$CLONE_BIN" snapshot --vm-id vg-src --name vg 2>"$E2E_WORK/snap.err" || true
cat "$E2E_WORK/snap.err"
check "snapshot vg taken" test -f "$CLONE_TEMPLATES_DIR/vg/state"
after_snap=$(read_id vg-src) || true
check "the source keeps its id across the snapshot" test "$after_snap" = "$src_id"
check "source stopped" stop_vm vg-src

# --- a restored VM ---
id=$("$CLONE_BIN" restore --snapshot vg --name vg-r1 -d 2>"$E2E_WORK/r1.err") || true
cat "$E2E_WORK/r1.err"
check "restore -d prints the id" test "$id" = vg-r1
new_vm_checks vg-r1 "restored" "$src_id"
r1_id=$LAST_ID
check "restored VM stops" stop_vm vg-r1

# --- a second VM from the same template: a fork when this build has `clone fork` ---
if "$CLONE_BIN" fork --help >/dev/null 2>&1; then
  what=fork
  id=$("$CLONE_BIN" fork --template vg --name vg-f1 -d 2>"$E2E_WORK/f1.err") || true
else
  what="second restore"
  id=$("$CLONE_BIN" restore --snapshot vg --name vg-f1 -d 2>"$E2E_WORK/f1.err") || true
fi
cat "$E2E_WORK/f1.err"
check "$what -d prints the id" test "$id" = vg-f1
new_vm_checks vg-f1 "$what" "$src_id" "$r1_id"
check "$what stops" stop_vm vg-f1

rm -rf "$CLONE_TEMPLATES_DIR"
e2e_finish
