// GuestMemory::Discard per backing: the host page really goes away (pagemap / mincore), the next
// guest access works and reads what the backing says (zeros, the file's page), and bad ranges
// touch nothing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "memory/guest_memory.h"

namespace clonevm {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kPage = 4096;

// Whether the page at `host` is mapped in this process (/proc/self/pagemap bit 63), and whether it
// is a private anonymous page (bit 61 clear: not a file page or shared anonymous page).
struct PageState {
  bool present = false;
  bool file_or_shared = false;
};
PageState Pagemap(const uint8_t* host) {
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  uint64_t entry = 0;
  off_t offset = static_cast<off_t>(reinterpret_cast<uintptr_t>(host) / kPage * sizeof(entry));
  EXPECT_EQ(::pread(fd, &entry, sizeof(entry), offset), static_cast<ssize_t>(sizeof(entry)));
  ::close(fd);
  return {((entry >> 63) & 1) != 0, ((entry >> 61) & 1) != 0};
}

// mincore(2): whether the page is resident (for shared memory: in the memfd's page cache).
bool Resident(const uint8_t* host) {
  unsigned char vec = 0;
  EXPECT_EQ(::mincore(const_cast<uint8_t*>(host), kPage, &vec), 0);
  return (vec & 1) != 0;
}

void Fill(const GuestMemory& mem, uint64_t gpa, uint64_t len, uint8_t value) {
  std::memset(mem.Span(gpa, len).data(), value, len);
}

bool AllBytes(const GuestMemory& mem, uint64_t gpa, uint64_t len, uint8_t value) {
  auto span = mem.Span(gpa, len);
  for (uint8_t b : span) {
    if (b != value) return false;
  }
  return !span.empty();
}

TEST(DiscardTest, AnonymousPagesAreReleasedAndReadAsZero) {
  auto mem = GuestMemory::Create(16 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  Fill(*mem, 2 * kMiB, 8 * kPage, 0xab);
  uint8_t* host = mem->Span(2 * kMiB, kPage).data();
  ASSERT_TRUE(Resident(host));
  ASSERT_TRUE(Pagemap(host).present);
  ASSERT_TRUE(mem->Discard(2 * kMiB, 8 * kPage));
  EXPECT_FALSE(Resident(host));
  EXPECT_FALSE(Pagemap(host).present);
  EXPECT_FALSE(Pagemap(host + 7 * kPage).present);
  EXPECT_TRUE(AllBytes(*mem, 2 * kMiB, 8 * kPage, 0));
  // The guest uses the page again: a fresh page, writable.
  ASSERT_TRUE(mem->Write<uint64_t>(2 * kMiB, 42));
  EXPECT_EQ(*mem->Read<uint64_t>(2 * kMiB), 42u);
  EXPECT_TRUE(Pagemap(host).present);
}

TEST(DiscardTest, NeighbouringPagesAreKept) {
  auto mem = GuestMemory::Create(16 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  Fill(*mem, 2 * kMiB - kPage, 3 * kPage, 0x5a);
  ASSERT_TRUE(mem->Discard(2 * kMiB, kPage));
  EXPECT_TRUE(AllBytes(*mem, 2 * kMiB - kPage, kPage, 0x5a));
  EXPECT_TRUE(AllBytes(*mem, 2 * kMiB + kPage, kPage, 0x5a));
}

// A fork's RAM: the template's memory file mapped MAP_PRIVATE. A page the guest wrote is a private
// anonymous copy; discarding it frees the copy and the page reads as the file's again.
TEST(DiscardTest, FilePrivateCopiesAreDroppedAndReadTheFileAgain) {
  constexpr uint64_t kRam = 8 * kMiB;
  int fd = ::memfd_create("discard-test-template", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, kRam), 0);
  std::vector<uint8_t> pattern(kPage, 0x11);
  ASSERT_EQ(::pwrite(fd, pattern.data(), kPage, 3 * kMiB), static_cast<ssize_t>(kPage));
  auto mem = GuestMemory::CreateFromFile(fd, kRam, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem) << mem.error().message();
  ASSERT_EQ(mem->regions()[0].backing, MemoryBacking::kFilePrivate);
  Fill(*mem, 3 * kMiB, kPage, 0x22);  // copy on write
  uint8_t* host = mem->Span(3 * kMiB, kPage).data();
  PageState copied = Pagemap(host);
  ASSERT_TRUE(copied.present);
  ASSERT_FALSE(copied.file_or_shared);  // a private anonymous copy
  ASSERT_TRUE(mem->Discard(3 * kMiB, kPage));
  EXPECT_FALSE(Pagemap(host).present);
  EXPECT_TRUE(AllBytes(*mem, 3 * kMiB, kPage, 0x11));
  EXPECT_TRUE(Pagemap(host).file_or_shared);  // reading maps the file's page, no copy
  ASSERT_TRUE(mem->Write<uint8_t>(3 * kMiB, 0x33));
  EXPECT_EQ(*mem->Read<uint8_t>(3 * kMiB), 0x33);
  uint8_t in_file = 0;
  ASSERT_EQ(::pread(fd, &in_file, 1, 3 * kMiB), 1);
  EXPECT_EQ(in_file, 0x11);  // the template never changes
  ::close(fd);
}

// Shared memfd RAM: MADV_DONTNEED would only unmap; the page must leave the memfd (mincore looks at
// its page cache) so the memory really returns to the host.
TEST(DiscardTest, SharedMemfdPagesArePunchedOut) {
  auto mem = GuestMemory::CreateShared(16 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem) << mem.error().message();
  ASSERT_EQ(mem->regions()[0].backing, MemoryBacking::kSharedMemfd);
  Fill(*mem, 4 * kMiB, 4 * kPage, 0x77);
  uint8_t* host = mem->Span(4 * kMiB, kPage).data();
  ASSERT_TRUE(Resident(host));
  ASSERT_TRUE(mem->Discard(4 * kMiB, 4 * kPage));
  EXPECT_FALSE(Resident(host));
  EXPECT_FALSE(Resident(host + 3 * kPage));
  EXPECT_TRUE(AllBytes(*mem, 4 * kMiB, 4 * kPage, 0));
  ASSERT_TRUE(mem->Write<uint32_t>(4 * kMiB, 7));
  EXPECT_EQ(*mem->Read<uint32_t>(4 * kMiB), 7u);
}

TEST(DiscardTest, SharedMemorySplitsAroundTheHole) {
  auto mem = GuestMemory::CreateShared(8 * kMiB, 4 * kMiB, 16 * kMiB);
  ASSERT_TRUE(mem) << mem.error().message();
  ASSERT_EQ(mem->regions().size(), 2u);
  ASSERT_TRUE(mem->Write<uint8_t>(16 * kMiB, 1));
  ASSERT_TRUE(mem->Write<uint8_t>(0, 2));
  EXPECT_EQ(*mem->Read<uint8_t>(16 * kMiB), 1);
  EXPECT_EQ(*mem->Read<uint8_t>(0), 2);
}

TEST(DiscardTest, BadRangesTouchNothing) {
  auto mem = GuestMemory::Create(8 * kMiB, 4 * kMiB, 16 * kMiB);  // [0, 4M) and [16M, 20M)
  ASSERT_TRUE(mem);
  Fill(*mem, 4 * kMiB - kPage, kPage, 0x42);
  Fill(*mem, 16 * kMiB, kPage, 0x42);
  EXPECT_FALSE(mem->Discard(4 * kMiB - kPage, 2 * kPage));  // into the hole
  EXPECT_FALSE(mem->Discard(4 * kMiB, kPage));              // in the hole
  EXPECT_FALSE(mem->Discard(20 * kMiB, kPage));             // past the end
  EXPECT_FALSE(mem->Discard(~0ull & ~(kPage - 1), kPage));  // would wrap
  EXPECT_FALSE(mem->Discard(16 * kMiB + 1, kPage));         // unaligned address
  EXPECT_FALSE(mem->Discard(16 * kMiB, 100));               // unaligned length
  EXPECT_TRUE(mem->Discard(16 * kMiB, 0));
  EXPECT_TRUE(AllBytes(*mem, 4 * kMiB - kPage, kPage, 0x42));
  EXPECT_TRUE(AllBytes(*mem, 16 * kMiB, kPage, 0x42));
}

TEST(DiscardTest, DiscardedPagesAreDirtyWhileTracking) {
  auto mem = GuestMemory::Create(8 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  ASSERT_TRUE(mem->Discard(kMiB, kPage));
  EXPECT_EQ(mem->dirty_log().TakeAll().Count(), 0u);  // not tracking: nothing recorded
  mem->dirty_log().Enable();
  ASSERT_TRUE(mem->Discard(kMiB, 2 * kPage));
  PageBitmap dirty = mem->dirty_log().TakeAll();
  EXPECT_EQ(dirty.Count(), 2u);
  EXPECT_TRUE(dirty.Test(kMiB / kPage));
  EXPECT_TRUE(dirty.Test(kMiB / kPage + 1));
}

}  // namespace
}  // namespace clonevm

namespace clonevm {
namespace {

// The VmFlags of the mapping that holds `addr` (/proc/self/smaps), e.g. "rd wr mr mw me ac mg".
std::string VmFlags(const void* addr) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  EXPECT_NE(f, nullptr);
  char line[512];
  bool inside = false;
  std::string flags;
  auto a = reinterpret_cast<uintptr_t>(addr);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      inside = a >= lo && a < hi;
      continue;
    }
    if (inside && std::strncmp(line, "VmFlags:", 8) == 0) {
      flags = line + 8;
      break;
    }
  }
  std::fclose(f);
  return flags;
}

TEST(KsmTest, GuestRamIsMergeableUnlessKsmIsOff) {
  auto on = GuestMemory::Create(8 * kMiB, 3 * kGiB, 4 * kGiB);
  auto off = GuestMemory::Create(8 * kMiB, 3 * kGiB, 4 * kGiB, Ksm::kOff);
  ASSERT_TRUE(on && off);
  std::string on_flags = VmFlags(on->regions()[0].host());
  if (on_flags.find(" mg") == std::string::npos) GTEST_SKIP() << "no KSM in this kernel (VmFlags:" << on_flags << ")";
  EXPECT_EQ(VmFlags(off->regions()[0].host()).find(" mg"), std::string::npos);
}

}  // namespace
}  // namespace clonevm
