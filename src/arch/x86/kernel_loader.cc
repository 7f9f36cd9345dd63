#include "arch/x86/kernel_loader.h"

#include <asm/bootparam.h>
#include <elf.h>

#include <cstring>

#include "arch/x86/layout.h"

namespace clonevm::x86 {
namespace {

constexpr size_t kSetupHeaderOffset = 0x1f1;
constexpr uint16_t kBootFlag = 0xAA55;
constexpr uint32_t kHdrSMagic = 0x53726448;   // "HdrS"
constexpr uint16_t kMinBootProtocol = 0x20c;  // 64-bit entry via xloadflags
constexpr uint64_t kPageSize = 4096;

// PVH (xen/include/public/arch-x86/hvm/start_info.h).
constexpr uint32_t kXenElfNotePhys32Entry = 18;
constexpr uint32_t kHvmStartMagic = 0x336ec578;
struct HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};
struct HvmModlistEntry {
  uint64_t paddr;
  uint64_t size;
  uint64_t cmdline_paddr;
  uint64_t reserved;
};
struct HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

uint64_t AlignDown(uint64_t v, uint64_t a) { return v & ~(a - 1); }
uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

template <typename T>
bool ReadAt(std::span<const uint8_t> image, uint64_t offset, T* out) {
  if (offset > image.size() || image.size() - offset < sizeof(T)) return false;
  std::memcpy(out, image.data() + offset, sizeof(T));
  return true;
}

Result<void> WriteCmdline(const GuestMemory& mem, const std::string& cmdline, uint64_t max_len) {
  if (cmdline.size() > max_len)
    return Fail("kernel command line is {} bytes; this kernel accepts at most {}", cmdline.size(), max_len);
  std::vector<uint8_t> bytes(cmdline.begin(), cmdline.end());
  bytes.push_back(0);
  return mem.WriteBytes(kCmdlineAddr, bytes);
}

// Places the initrd page-aligned at the top of RAM below `limit`, above `kernel_end`.
Result<uint64_t> PlaceInitrd(const GuestMemory& mem, std::span<const uint8_t> initrd, uint64_t kernel_end,
                             uint64_t limit) {
  uint64_t top = std::min(mem.low_end(), limit);
  uint64_t size = initrd.size();
  if (size > top || AlignDown(top - size, kPageSize) < AlignUp(kernel_end, kPageSize)) {
    return Fail("initrd ({} MiB) does not fit in guest memory below {} MiB next to the kernel; raise --mem-mb",
                (size + kMiB - 1) / kMiB, top / kMiB);
  }
  uint64_t gpa = AlignDown(top - size, kPageSize);
  CLONE_TRY_VOID(mem.WriteBytes(gpa, initrd));
  return gpa;
}

void FillZeroPageE820(const GuestMemory& mem, boot_params* params) {
  auto e820 = BuildE820(mem);
  params->e820_entries = static_cast<uint8_t>(e820.size());
  for (size_t i = 0; i < e820.size(); ++i) {
    params->e820_table[i].addr = e820[i].addr;
    params->e820_table[i].size = e820[i].size;
    params->e820_table[i].type = e820[i].type;
  }
}

// Fills the loader-owned fields of a zero page and writes it and the command line.
Result<void> WriteZeroPage(const GuestMemory& mem, boot_params* params, const BootInputs& in, uint64_t initrd_gpa) {
  params->hdr.type_of_loader = 0xff;
  params->hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
  params->hdr.heap_end_ptr = 0xfe00;
  params->hdr.cmd_line_ptr = static_cast<uint32_t>(kCmdlineAddr);
  params->hdr.ramdisk_image = static_cast<uint32_t>(initrd_gpa);
  params->hdr.ramdisk_size = static_cast<uint32_t>(in.initrd.size());
  params->acpi_rsdp_addr = in.rsdp_gpa;
  FillZeroPageE820(mem, params);
  return mem.Write(kZeroPageAddr, *params);
}

Result<BootSetup> LoadBzImage(const GuestMemory& mem, const BootInputs& in) {
  boot_params params{};
  auto image = in.kernel;
  if (image.size() < 0x250) return Fail("kernel image is truncated ({} bytes)", image.size());
  // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201 (its own length field).
  size_t hdr_end = std::min<size_t>(0x202 + image[0x201], kSetupHeaderOffset + sizeof(setup_header));
  std::memcpy(&params.hdr, image.data() + kSetupHeaderOffset, hdr_end - kSetupHeaderOffset);
  const setup_header& hdr = params.hdr;
  if (hdr.version < kMinBootProtocol || !(hdr.xloadflags & XLF_KERNEL_64)) {
    return Fail("kernel uses boot protocol {}.{:02} without a 64-bit entry point (need 2.12+ with XLF_KERNEL_64)",
                hdr.version >> 8, hdr.version & 0xff);
  }
  uint64_t setup_sects = hdr.setup_sects == 0 ? 4 : hdr.setup_sects;
  uint64_t kernel_offset = (setup_sects + 1) * 512;
  if (kernel_offset >= image.size())
    return Fail("kernel image is truncated: setup ({} bytes) is the whole file", kernel_offset);
  auto payload = image.subspan(kernel_offset);
  uint64_t footprint = std::max<uint64_t>(payload.size(), hdr.init_size);
  if (!mem.Contains(kKernelLoadAddr, footprint)) {
    return Fail("kernel needs {} MiB above 1 MiB; guest memory is too small", (footprint + kMiB - 1) / kMiB);
  }
  CLONE_TRY_VOID(mem.WriteBytes(kKernelLoadAddr, payload));
  uint64_t max_cmdline = hdr.cmdline_size != 0 ? hdr.cmdline_size : 255;
  CLONE_TRY_VOID(WriteCmdline(mem, in.cmdline, std::min(max_cmdline, kCmdlineMax - 1)));
  BootSetup setup;
  setup.protocol = BootProtocol::kLinux64;
  setup.entry = kKernelLoadAddr + 0x200;
  setup.boot_info_gpa = kZeroPageAddr;
  setup.kernel_end = kKernelLoadAddr + footprint;
  if (!in.initrd.empty()) {
    setup.initrd_gpa = CLONE_TRY(PlaceInitrd(mem, in.initrd, setup.kernel_end, uint64_t{hdr.initrd_addr_max} + 1));
  }
  CLONE_TRY_VOID(WriteZeroPage(mem, &params, in, setup.initrd_gpa));
  return setup;
}

// Returns the PVH 32-bit entry point from PT_NOTE segments, or 0 if there is none.
uint64_t FindPvhEntry(std::span<const uint8_t> image, const Elf64_Phdr& note) {
  uint64_t off = note.p_offset;
  if (off > image.size() || note.p_filesz > image.size() - off) return 0;
  uint64_t end = off + note.p_filesz;
  while (off + sizeof(Elf64_Nhdr) <= end) {
    Elf64_Nhdr nh{};
    if (!ReadAt(image, off, &nh)) return 0;
    uint64_t name_off = off + sizeof(nh);
    uint64_t desc_off = name_off + AlignUp(nh.n_namesz, 4);
    uint64_t next = desc_off + AlignUp(nh.n_descsz, 4);
    if (next > end || next <= off) return 0;
    if (nh.n_type == kXenElfNotePhys32Entry && nh.n_namesz == 4 &&
        std::memcmp(image.data() + name_off, "Xen", 4) == 0) {
      if (nh.n_descsz == 8) {
        uint64_t entry64 = 0;
        ReadAt(image, desc_off, &entry64);
        return entry64;
      }
      uint32_t entry32 = 0;
      if (nh.n_descsz >= 4) ReadAt(image, desc_off, &entry32);
      return entry32;
    }
    off = next;
  }
  return 0;
}

Result<void> WritePvhStartInfo(const GuestMemory& mem, const BootInputs& in, uint64_t initrd_gpa) {
  auto e820 = BuildE820(mem);
  for (size_t i = 0; i < e820.size(); ++i) {
    HvmMemmapEntry entry{e820[i].addr, e820[i].size, e820[i].type, 0};
    CLONE_TRY_VOID(mem.Write(kPvhMemmapAddr + i * sizeof(entry), entry));
  }
  HvmStartInfo info{};
  info.magic = kHvmStartMagic;
  info.version = 1;
  info.cmdline_paddr = kCmdlineAddr;
  info.rsdp_paddr = in.rsdp_gpa;
  info.memmap_paddr = kPvhMemmapAddr;
  info.memmap_entries = static_cast<uint32_t>(e820.size());
  if (!in.initrd.empty()) {
    HvmModlistEntry module{initrd_gpa, in.initrd.size(), 0, 0};
    CLONE_TRY_VOID(mem.Write(kPvhModlistAddr, module));
    info.nr_modules = 1;
    info.modlist_paddr = kPvhModlistAddr;
  }
  return mem.Write(kPvhStartInfoAddr, info);
}

Result<BootSetup> LoadElf(const GuestMemory& mem, const BootInputs& in) {
  auto image = in.kernel;
  Elf64_Ehdr eh{};
  if (!ReadAt(image, 0, &eh)) return Fail("ELF kernel is truncated");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64 || eh.e_type != ET_EXEC) {
    return Fail("ELF kernel is not a 64-bit x86_64 executable");
  }
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0) return Fail("ELF kernel has no usable program headers");
  BootSetup setup;
  uint64_t pvh_entry = 0;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    if (!ReadAt(image, eh.e_phoff + uint64_t{i} * sizeof(ph), &ph))
      return Fail("ELF kernel is truncated (program header {})", i);
    if (ph.p_type == PT_NOTE && pvh_entry == 0) pvh_entry = FindPvhEntry(image, ph);
    if (ph.p_type != PT_LOAD) continue;
    if (ph.p_offset > image.size() || ph.p_filesz > image.size() - ph.p_offset || ph.p_filesz > ph.p_memsz) {
      return Fail("ELF kernel is truncated (segment {} needs bytes past the end of the file)", i);
    }
    if (ph.p_paddr < kHighMemoryStart || !mem.Contains(ph.p_paddr, ph.p_memsz)) {
      return Fail("ELF segment {} ({:#x}+{:#x}) does not fit in guest memory", i, ph.p_paddr, ph.p_memsz);
    }
    CLONE_TRY_VOID(mem.WriteBytes(ph.p_paddr, image.subspan(ph.p_offset, ph.p_filesz)));
    setup.kernel_end = std::max(setup.kernel_end, ph.p_paddr + ph.p_memsz);
  }
  if (setup.kernel_end == 0) return Fail("ELF kernel has no loadable segments");
  CLONE_TRY_VOID(WriteCmdline(mem, in.cmdline, kCmdlineMax - 1));
  if (!in.initrd.empty()) setup.initrd_gpa = CLONE_TRY(PlaceInitrd(mem, in.initrd, setup.kernel_end, 4 * kGiB));
  if (pvh_entry != 0) {
    setup.protocol = BootProtocol::kPvh;
    setup.entry = pvh_entry;
    setup.boot_info_gpa = kPvhStartInfoAddr;
    CLONE_TRY_VOID(WritePvhStartInfo(mem, in, setup.initrd_gpa));
    return setup;
  }
  boot_params params{};
  params.hdr.boot_flag = kBootFlag;
  params.hdr.header = kHdrSMagic;
  params.hdr.kernel_alignment = 0x1000000;
  setup.protocol = BootProtocol::kLinux64;
  setup.entry = eh.e_entry;
  setup.boot_info_gpa = kZeroPageAddr;
  CLONE_TRY_VOID(WriteZeroPage(mem, &params, in, setup.initrd_gpa));
  return setup;
}

}  // namespace

KernelFormat DetectKernelFormat(std::span<const uint8_t> image) {
  if (image.size() >= 4 && std::memcmp(image.data(), ELFMAG, SELFMAG) == 0) return KernelFormat::kElf;
  uint16_t boot_flag = 0;
  uint32_t magic = 0;
  if (ReadAt(image, 0x1fe, &boot_flag) && ReadAt(image, 0x202, &magic) && boot_flag == kBootFlag &&
      magic == kHdrSMagic) {
    return KernelFormat::kBzImage;
  }
  return KernelFormat::kUnknown;
}

std::vector<E820Entry> BuildE820(const GuestMemory& mem) {
  std::vector<E820Entry> map;
  // The identity page is reserved so that the guest agent can read it through /dev/mem: x86's
  // STRICT_DEVMEM shows System RAM as zeros, even below 1 MiB, but lets root read reserved ranges.
  map.push_back({0, kIdentityPageAddr, kE820Ram});
  map.push_back({kIdentityPageAddr, kIdentityPageSize, kE820Reserved});
  map.push_back({kIdentityPageAddr + kIdentityPageSize, kEbdaStart - kIdentityPageAddr - kIdentityPageSize, kE820Ram});
  map.push_back({kEbdaStart, 0xa0000 - kEbdaStart, kE820Reserved});
  map.push_back({kAcpiAddr, kHighMemoryStart - kAcpiAddr, kE820Reserved});
  for (const auto& r : mem.regions()) {
    uint64_t start = std::max(r.gpa, kHighMemoryStart);
    if (r.end() > start) map.push_back({start, r.end() - start, kE820Ram});
  }
  return map;
}

Result<BootSetup> LoadKernel(const GuestMemory& mem, const BootInputs& inputs) {
  switch (DetectKernelFormat(inputs.kernel)) {
    case KernelFormat::kBzImage:
      return LoadBzImage(mem, inputs);
    case KernelFormat::kElf:
      return LoadElf(mem, inputs);
    case KernelFormat::kUnknown:
      break;
  }
  return Fail("not a Linux kernel (neither a bzImage nor an ELF vmlinux)");
}

}  // namespace clonevm::x86
