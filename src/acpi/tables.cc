#include "acpi/tables.h"

#include <algorithm>
#include <cstring>
#include <span>
#include <string_view>

#include "acpi/bytes.h"
#include "acpi/dsdt.h"
#include "base/check.h"

namespace clonevm::acpi {
namespace {

// Identification written into every table header (ACPI 6.4 §5.2.6).
constexpr std::string_view kOemId = "CLONE ";
constexpr uint32_t kOemRevision = 1;
constexpr std::string_view kCreatorId = "CLON";
constexpr uint32_t kCreatorRevision = 1;
constexpr std::string_view kHypervisorVendorId = "CLONEVMM";

constexpr size_t kHeaderSize = 36;
constexpr size_t kRsdpSize = 36;
constexpr size_t kFadtSize = 276;  // FADT revision 6
constexpr size_t kTableAlignment = 16;
constexpr uint32_t kMaxCpus = 255;            // xAPIC ids 0..254; 0xFF is the broadcast id
constexpr size_t kMaxVirtioDevices = 0x1000;  // device names V000..VFFF
constexpr uint32_t kMaxGedGsi = 255;          // Linux's GED names _Exx/_Lxx events up to 0xFF

// Generic Address Structure (ACPI 6.4 §5.2.3.2).
constexpr uint8_t kGasSystemIo = 1;
constexpr uint8_t kGasByteAccess = 1;

// FADT (ACPI 6.4 §5.2.9): field offsets, flags, IA-PC boot architecture flags.
constexpr size_t kFadtIapcBootArch = 109;
constexpr size_t kFadtFlags = 112;
constexpr size_t kFadtResetReg = 116;
constexpr size_t kFadtResetValue = 128;
constexpr size_t kFadtMinorVersion = 131;
constexpr size_t kFadtXDsdt = 140;
constexpr size_t kFadtSleepControlReg = 244;
constexpr size_t kFadtSleepStatusReg = 256;
constexpr size_t kFadtHypervisorVendorId = 268;
constexpr uint32_t kFadtPwrButton = 1 << 4;  // no fixed-feature power button
constexpr uint32_t kFadtSlpButton = 1 << 5;  // no fixed-feature sleep button
constexpr uint32_t kFadtResetRegSup = 1 << 10;
constexpr uint32_t kFadtHwReducedAcpi = 1 << 20;
constexpr uint16_t kIapcVgaNotPresent = 1 << 2;

// MADT (ACPI 6.4 §5.2.12).
constexpr uint8_t kMadtLocalApic = 0;
constexpr uint8_t kMadtIoApic = 1;
constexpr uint8_t kMadtLocalApicNmi = 4;
constexpr uint32_t kLocalApicEnabled = 1;
constexpr uint8_t kAllProcessors = 0xFF;
constexpr uint8_t kLint1 = 1;

uint64_t AlignUp(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

void StoreChars(std::span<uint8_t> out, size_t offset, std::string_view text) {
  CLONE_CHECK(offset <= out.size() && text.size() <= out.size() - offset);
  std::memcpy(out.data() + offset, text.data(), text.size());
}

// A zero-filled table of `size` bytes with its header filled in except length and checksum.
std::vector<uint8_t> NewTable(std::string_view signature, uint8_t revision, std::string_view oem_table_id,
                              size_t size) {
  CLONE_CHECK(signature.size() == 4 && oem_table_id.size() == 8 && size >= kHeaderSize);
  std::vector<uint8_t> table(size, 0);
  StoreChars(table, 0, signature);
  table[8] = revision;
  StoreChars(table, 10, kOemId);
  StoreChars(table, 16, oem_table_id);
  StoreLe(table, 24, kOemRevision, 4);
  StoreChars(table, 28, kCreatorId);
  StoreLe(table, 32, kCreatorRevision, 4);
  return table;
}

// Writes the final length and checksum; call after the last byte is in place.
void SealTable(std::vector<uint8_t>& table) {
  StoreLe(table, 4, table.size(), 4);
  table[9] = 0;
  table[9] = Checksum(table);
}

void StoreIoGas(std::span<uint8_t> out, size_t offset, uint16_t port) {
  out[offset] = kGasSystemIo;
  out[offset + 1] = 8;  // register bit width
  out[offset + 2] = 0;  // bit offset
  out[offset + 3] = kGasByteAccess;
  StoreLe(out, offset + 4, port, 8);
}

// FADT revision 6 for a hardware-reduced platform: no PM1/GPE blocks, no SCI, no FACS; sleep
// and reset go through the PM register block at pm_io_base.
std::vector<uint8_t> BuildFadt(uint16_t pm_io_base, uint64_t dsdt_gpa) {
  std::vector<uint8_t> fadt = NewTable("FACP", 6, "CLONFACP", kFadtSize);
  StoreLe(fadt, kFadtIapcBootArch, kIapcVgaNotPresent, 2);
  StoreLe(fadt, kFadtFlags, kFadtHwReducedAcpi | kFadtResetRegSup | kFadtPwrButton | kFadtSlpButton, 4);
  StoreIoGas(fadt, kFadtResetReg, static_cast<uint16_t>(pm_io_base + kResetOffset));
  fadt[kFadtResetValue] = kResetValue;
  fadt[kFadtMinorVersion] = 4;  // ACPI 6.4
  StoreLe(fadt, kFadtXDsdt, dsdt_gpa, 8);
  StoreIoGas(fadt, kFadtSleepControlReg, static_cast<uint16_t>(pm_io_base + kSleepControlOffset));
  StoreIoGas(fadt, kFadtSleepStatusReg, static_cast<uint16_t>(pm_io_base + kSleepStatusOffset));
  StoreChars(fadt, kFadtHypervisorVendorId, kHypervisorVendorId);
  SealTable(fadt);
  return fadt;
}

std::vector<uint8_t> BuildDsdt(const AcpiConfig& config) {
  std::vector<uint8_t> dsdt = NewTable("DSDT", 2, "CLONDSDT", kHeaderSize);
  const aml::Bytes body = BuildDsdtBody(config);
  dsdt.insert(dsdt.end(), body.begin(), body.end());
  SealTable(dsdt);
  return dsdt;
}

// MADT revision 5: one enabled Processor Local APIC per vCPU (UID == APIC id == index), the
// I/O APIC with GSI base 0, and LINT1 as NMI on all processors. PCAT_COMPAT is clear and there
// are no Interrupt Source Overrides: see README.md, "Interrupts".
std::vector<uint8_t> BuildMadt(const AcpiConfig& config) {
  std::vector<uint8_t> madt = NewTable("APIC", 5, "CLONAPIC", kHeaderSize + 8);
  StoreLe(madt, kHeaderSize, config.lapic_addr, 4);
  StoreLe(madt, kHeaderSize + 4, 0, 4);  // flags: no PCAT_COMPAT
  for (uint32_t cpu = 0; cpu < config.num_cpus; ++cpu) {
    madt.insert(madt.end(), {kMadtLocalApic, 8, static_cast<uint8_t>(cpu), static_cast<uint8_t>(cpu)});
    AppendLe(madt, kLocalApicEnabled, 4);
  }
  madt.insert(madt.end(), {kMadtIoApic, 12, config.ioapic_id, 0});
  AppendLe(madt, config.ioapic_addr, 4);
  AppendLe(madt, 0, 4);  // GSI base
  madt.insert(madt.end(), {kMadtLocalApicNmi, 6, kAllProcessors});
  AppendLe(madt, 0, 2);  // MPS INTI flags: conforms to the bus
  madt.push_back(kLint1);
  SealTable(madt);
  return madt;
}

std::vector<uint8_t> BuildXsdt(std::span<const uint64_t> entries) {
  std::vector<uint8_t> xsdt = NewTable("XSDT", 1, "CLONXSDT", kHeaderSize);
  for (uint64_t gpa : entries) AppendLe(xsdt, gpa, 8);
  SealTable(xsdt);
  return xsdt;
}

// RSDP revision 2 (ACPI 6.4 §5.2.5.3): no RSDT, only the XSDT.
std::vector<uint8_t> BuildRsdp(uint64_t xsdt_gpa) {
  std::vector<uint8_t> rsdp(kRsdpSize, 0);
  StoreChars(rsdp, 0, "RSD PTR ");
  StoreChars(rsdp, 9, kOemId);
  rsdp[15] = 2;  // revision
  StoreLe(rsdp, 20, kRsdpSize, 4);
  StoreLe(rsdp, 24, xsdt_gpa, 8);
  rsdp[8] = Checksum(std::span(rsdp).first(20));
  rsdp[32] = Checksum(rsdp);
  return rsdp;
}

// The GED's interrupt is edge-triggered and exclusive: it must not share a GSI with another
// device the DSDT describes, and it only has something to signal when there is a VGEN device.
Result<void> ValidateGedGsi(const AcpiConfig& config, uint32_t gsi) {
  if (!config.vmgenid_gpa) return Fail("a GED (GSI {}) without a VM generation id device has no event", gsi);
  if (gsi > kMaxGedGsi) return Fail("GED GSI {} is above {}", gsi, kMaxGedGsi);
  if ((config.com1 && gsi == kCom1Irq) || (config.cmos_rtc && gsi == kRtcIrq)) {
    return Fail("GED GSI {} is taken by {}", gsi, gsi == kCom1Irq ? "COM1" : "the RTC");
  }
  for (size_t i = 0; i < config.virtio_mmio.size(); ++i) {
    if (config.virtio_mmio[i].gsi == gsi) return Fail("GED GSI {} is taken by virtio-mmio device {}", gsi, i);
  }
  return {};
}

Result<void> ValidateConfig(const AcpiConfig& config) {
  if (config.num_cpus < 1 || config.num_cpus > kMaxCpus) {
    return Fail("num_cpus {} out of range 1..{}", config.num_cpus, kMaxCpus);
  }
  if (config.pm_io_base > 0x10000 - kPmRegisterBlockSize) {
    return Fail("pm_io_base {:#x}: the PM register block does not fit below port 0x10000", config.pm_io_base);
  }
  if (config.virtio_mmio.size() > kMaxVirtioDevices) {
    return Fail("{} virtio-mmio devices, at most {}", config.virtio_mmio.size(), kMaxVirtioDevices);
  }
  for (const VirtioMmioNode& node : config.virtio_mmio) {
    if (node.size == 0 || node.base > (uint64_t{1} << 32) - node.size) {
      return Fail("virtio-mmio window {:#x}+{:#x} is empty or not below 4 GiB", node.base, node.size);
    }
  }
  if (config.vmgenid_gpa && *config.vmgenid_gpa % 8 != 0) {
    return Fail("vmgenid_gpa {:#x} is not 8-byte aligned", *config.vmgenid_gpa);
  }
  if (config.ged_gsi) CLONE_TRY_VOID(ValidateGedGsi(config, *config.ged_gsi));
  return {};
}

// Where each table starts in the blob, in the order RSDP, XSDT, FADT, DSDT, MADT.
struct Layout {
  uint64_t xsdt, fadt, dsdt, madt, total;
};

constexpr size_t kXsdtEntries = 2;  // FADT, MADT

Layout ComputeLayout(size_t dsdt_size, size_t madt_size) {
  Layout l;
  l.xsdt = AlignUp(kRsdpSize, kTableAlignment);
  l.fadt = AlignUp(l.xsdt + kHeaderSize + 8 * kXsdtEntries, kTableAlignment);
  l.dsdt = AlignUp(l.fadt + kFadtSize, kTableAlignment);
  l.madt = AlignUp(l.dsdt + dsdt_size, kTableAlignment);
  l.total = l.madt + madt_size;
  return l;
}

void Put(std::vector<uint8_t>& blob, uint64_t offset, const std::vector<uint8_t>& table) {
  CLONE_CHECK(offset <= blob.size() && table.size() <= blob.size() - offset);
  std::copy(table.begin(), table.end(), blob.begin() + static_cast<ptrdiff_t>(offset));
}

}  // namespace

Result<AcpiBlob> BuildAcpiTables(const AcpiConfig& config, uint64_t base_gpa, size_t max_size) {
  if (auto valid = ValidateConfig(config); !valid) return Fail(valid.error().Wrap("ACPI tables"));
  if (base_gpa % kTableAlignment != 0) {
    return Fail("ACPI tables: base_gpa {:#x} is not 16-byte aligned", base_gpa);
  }
  const std::vector<uint8_t> dsdt = BuildDsdt(config);
  const std::vector<uint8_t> madt = BuildMadt(config);
  const Layout layout = ComputeLayout(dsdt.size(), madt.size());
  if (layout.total > max_size) {
    return Fail("ACPI tables need {} bytes, more than the {} reserved for them", layout.total, max_size);
  }
  if (base_gpa > UINT64_MAX - layout.total) {
    return Fail("ACPI tables: base_gpa {:#x} + {} bytes overflows", base_gpa, layout.total);
  }

  AcpiBlob blob{base_gpa, std::vector<uint8_t>(layout.total, 0), base_gpa};
  const uint64_t xsdt_entries[kXsdtEntries] = {base_gpa + layout.fadt, base_gpa + layout.madt};
  Put(blob.bytes, 0, BuildRsdp(base_gpa + layout.xsdt));
  Put(blob.bytes, layout.xsdt, BuildXsdt(xsdt_entries));
  Put(blob.bytes, layout.fadt, BuildFadt(config.pm_io_base, base_gpa + layout.dsdt));
  Put(blob.bytes, layout.dsdt, dsdt);
  Put(blob.bytes, layout.madt, madt);
  return blob;
}

}  // namespace clonevm::acpi
