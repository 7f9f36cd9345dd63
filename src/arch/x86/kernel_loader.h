// Loading a Linux kernel into guest memory.
//
// Two image formats:
//  - bzImage: the protected-mode part is copied to 1 MiB and entered through the 64-bit boot
//    protocol (Documentation/arch/x86/boot.rst) with a zero page (boot_params) at kZeroPageAddr.
//  - ELF vmlinux: PT_LOAD segments are copied to their physical addresses. If the image has a
//    Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), it is entered in 32-bit protected mode with an
//    hvm_start_info; otherwise through the 64-bit boot protocol at e_entry.
// The loader writes the kernel, the initrd, the command line, the e820 map and the boot structure.
// Every offset and length read from the image is checked against the file and guest RAM: a
// truncated or hostile image is an Error, never an out-of-bounds access.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "memory/guest_memory.h"

namespace clonevm::x86 {

enum class BootProtocol { kLinux64, kPvh };

struct BootInputs {
  std::span<const uint8_t> kernel;
  std::span<const uint8_t> initrd;  // empty: no initrd
  std::string cmdline;
  uint64_t rsdp_gpa = 0;  // 0: no ACPI
};

struct BootSetup {
  BootProtocol protocol = BootProtocol::kLinux64;
  uint64_t entry = 0;          // guest physical entry point
  uint64_t boot_info_gpa = 0;  // RSI (boot_params) or EBX (hvm_start_info)
  uint64_t kernel_end = 0;     // first byte above the loaded kernel
  uint64_t initrd_gpa = 0;
};

enum class KernelFormat { kBzImage, kElf, kUnknown };
KernelFormat DetectKernelFormat(std::span<const uint8_t> image);

// An e820 entry (type: 1 RAM, 2 reserved).
struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};
inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;
std::vector<E820Entry> BuildE820(const GuestMemory& mem);

// Loads kernel + initrd + cmdline into `mem` and writes the boot structures. Fails with a message
// a user understands ("not a Linux kernel", "initrd does not fit", "command line too long", ...).
[[nodiscard]] Result<BootSetup> LoadKernel(const GuestMemory& mem, const BootInputs& inputs);

}  // namespace clonevm::x86
