// The snapshot directory format without KVM: write a snapshot of a GuestMemory and a VmState, read
// it back, and check that damaged snapshots are refused with clear errors.
#include "snapshot/format.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "devices/virtio/virtio_spec.h"

namespace clonevm::snapshot {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1 << 20;

class SnapshotFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("clone-snapshot-test-{}-{}", ::getpid(),
                                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // 24 MiB below a 16 MiB "hole" so both regions exist; a few pages written.
  static GuestMemory Memory() {
    auto mem = GuestMemory::Create(24 * kMiB, 16 * kMiB, 32 * kMiB);
    EXPECT_TRUE(mem);
    EXPECT_TRUE(mem->Write<uint64_t>(0x1000, 0x1122334455667788ull));
    EXPECT_TRUE(mem->Write<uint8_t>(15 * kMiB + 17, 0xab));
    EXPECT_TRUE(mem->Write<uint32_t>(32 * kMiB + 5 * 4096, 0xdeadbeef));
    return std::move(*mem);
  }

  static VmState State() {
    VmState s;
    VcpuState v;
    v.regs.rip = 0xffffffff81000000ull;
    v.regs.rax = 42;
    v.sregs.cr0 = 0x80050033;
    v.xsave.assign(4096, 0);
    v.xsave[512] = 7;
    v.lapic.regs[0x20] = 1;
    v.tsc_khz = 2'000'000;
    v.cpuid.push_back(kvm_cpuid_entry2{});
    v.msrs.push_back({0x10, 0, 123456789});
    s.vcpus.push_back(v);
    s.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    s.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    s.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    s.clock.clock = 5'000'000'000ull;
    s.serial.rx = {'x'};
    s.virtio.push_back({4, {{"version", 1}, {"status", 15}}});
    return s;
  }

  static SnapshotConfig Config() {
    SnapshotConfig c;
    c.mem_bytes = 24 * kMiB;
    c.vcpus = 1;
    c.virtio_types = {4};
    c.rng = true;
    c.cmdline = "console=ttyS0";
    c.source_vm = "vm-test";
    return c;
  }

  std::string Path(const std::string& file) const { return (dir_ / "t1" / file).string(); }
  void WriteGood() {
    auto mem = Memory();
    auto written = Write(dir_.string(), "t1", mem, State(), Config());
    ASSERT_TRUE(written) << written.error().message();
  }
  std::string ReadError() const {
    auto loaded = Read(dir_.string(), "t1");
    return loaded ? std::string() : loaded.error().message();
  }
  void FlipByte(const std::string& file, off_t offset) const {
    std::fstream f(Path(file), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x20);
    f.seekp(offset);
    f.write(&c, 1);
  }

  fs::path dir_;
};

TEST_F(SnapshotFormatTest, WriteThenReadRoundTrips) {
  auto mem = Memory();
  auto written = Write(dir_.string(), "t1", mem, State(), Config());
  ASSERT_TRUE(written) << written.error().message();
  EXPECT_EQ(written->memory_bytes, 24 * kMiB);
  EXPECT_EQ(written->data_bytes, 3 * 4096u);  // three non-zero pages
  auto loaded = Read(dir_.string(), "t1");
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_TRUE(loaded->state == State());
  EXPECT_EQ(loaded->config.cmdline, "console=ttyS0");
  EXPECT_EQ(loaded->config.virtio_types, std::vector<uint32_t>{4});
  // The memory file maps back to the same guest-physical bytes.
  auto restored = GuestMemory::CreateFromFile(loaded->memory.base.get(), 24 * kMiB, 16 * kMiB, 32 * kMiB);
  ASSERT_TRUE(restored) << restored.error().message();
  EXPECT_EQ(*restored->Read<uint64_t>(0x1000), 0x1122334455667788ull);
  EXPECT_EQ(*restored->Read<uint8_t>(15 * kMiB + 17), 0xab);
  EXPECT_EQ(*restored->Read<uint32_t>(32 * kMiB + 5 * 4096), 0xdeadbeefu);
  EXPECT_EQ(*restored->Read<uint64_t>(32 * kMiB + 6 * 4096), 0u);
}

TEST_F(SnapshotFormatTest, MemoryFileIsSparse) {
  WriteGood();
  struct stat st {};
  ASSERT_EQ(::stat(Path("memory").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 24 * kMiB);
  // Three pages of data; filesystems may round allocations up, but nowhere near 24 MiB.
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 1 * kMiB);
}

TEST_F(SnapshotFormatTest, ExistingNameIsRefusedAndNothingTemporaryIsLeft) {
  WriteGood();
  auto mem = Memory();
  auto again = Write(dir_.string(), "t1", mem, State(), Config());
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message().find("already exists"), std::string::npos);
  for (const auto& entry : fs::directory_iterator(dir_)) EXPECT_EQ(entry.path().filename(), "t1");
}

TEST_F(SnapshotFormatTest, BadNamesAreRefused) {
  auto mem = Memory();
  for (const char* name : {"", "../x", "a/b", ".hidden", "-x"}) {
    EXPECT_FALSE(Write(dir_.string(), name, mem, State(), Config())) << name;
  }
}

TEST_F(SnapshotFormatTest, FlippedStateByteIsCorrupt) {
  WriteGood();
  auto size = fs::file_size(Path("state"));
  FlipByte("state", static_cast<off_t>(size - 10));
  std::string error = ReadError();
  EXPECT_NE(error.find("corrupt (CRC mismatch)"), std::string::npos) << error;
  EXPECT_NE(error.find("t1"), std::string::npos) << error;
}

TEST_F(SnapshotFormatTest, FlippedHeaderByteIsCorrupt) {
  WriteGood();
  FlipByte("state", 17);  // the body length
  EXPECT_NE(ReadError().find("header is corrupt"), std::string::npos) << ReadError();
}

TEST_F(SnapshotFormatTest, EditedConfigIsCorrupt) {
  WriteGood();
  FlipByte("config", 20);
  EXPECT_NE(ReadError().find("config file is corrupt"), std::string::npos) << ReadError();
}

TEST_F(SnapshotFormatTest, TruncatedFilesAreRefused) {
  WriteGood();
  auto size = fs::file_size(Path("state"));
  fs::resize_file(Path("state"), size - 1);
  EXPECT_NE(ReadError().find("truncated"), std::string::npos) << ReadError();
  fs::resize_file(Path("state"), 10);
  EXPECT_NE(ReadError().find("truncated"), std::string::npos) << ReadError();
}

TEST_F(SnapshotFormatTest, TruncatedMemoryIsRefused) {
  WriteGood();
  fs::resize_file(Path("memory"), 8 * kMiB);
  EXPECT_NE(ReadError().find("memory file has"), std::string::npos) << ReadError();
}

TEST_F(SnapshotFormatTest, NewerFormatVersionIsRefused) {
  std::vector<uint8_t> bytes = EncodeStateFile(nlohmann::json::object(), 4096, 0);
  bytes[8] = 3;
  // Re-seal the header so only the version differs.
  uint32_t crc = Crc32(std::span(bytes.data(), 28));
  for (int i = 0; i < 4; ++i) bytes[28 + i] = static_cast<uint8_t>(crc >> (8 * i));
  auto decoded = DecodeStateFile(bytes);
  ASSERT_FALSE(decoded);
  EXPECT_NE(decoded.error().message().find("format version 3 is not supported"), std::string::npos)
      << decoded.error().message();
  // Version 2 (incremental) without its page bitmap is refused rather than read as a full snapshot.
  bytes[8] = 2;
  crc = Crc32(std::span(bytes.data(), 28));
  for (int i = 0; i < 4; ++i) bytes[28 + i] = static_cast<uint8_t>(crc >> (8 * i));
  decoded = DecodeStateFile(bytes);
  ASSERT_FALSE(decoded);
  EXPECT_NE(decoded.error().message().find("lacks a memory page bitmap"), std::string::npos)
      << decoded.error().message();
}

TEST_F(SnapshotFormatTest, NotASnapshot) {
  std::vector<uint8_t> bytes(64, 'x');
  auto decoded = DecodeStateFile(bytes);
  ASSERT_FALSE(decoded);
  EXPECT_NE(decoded.error().message().find("bad magic"), std::string::npos);
}

TEST_F(SnapshotFormatTest, MissingSnapshotSaysSo) {
  EXPECT_NE(ReadError().find("no snapshot 't1'"), std::string::npos) << ReadError();
}

TEST_F(SnapshotFormatTest, ListAndRemove) {
  WriteGood();
  fs::create_directories(dir_ / ".t2.tmp-1");  // a crash leftover
  auto entries = List(dir_.string());
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].name, "t1");
  ASSERT_TRUE(entries[0].config);
  EXPECT_EQ(entries[0].config->mem_bytes, 24 * kMiB);
  EXPECT_GT(entries[0].disk_bytes, 0u);
  ASSERT_TRUE(Remove(dir_.string(), "t1"));
  EXPECT_TRUE(List(dir_.string()).empty());
  EXPECT_FALSE(Remove(dir_.string(), "t1"));
}

TEST_F(SnapshotFormatTest, ConfigRoundTrips) {
  SnapshotConfig c = Config();
  c.vsock_cid = 7;
  SnapshotDisk disk;
  disk.path = "/images/a.qcow2";
  disk.read_only = true;
  disk.serial = "clone-disk0";
  c.disks.push_back(disk);
  auto back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->vsock_cid, 7u);
  ASSERT_EQ(back->disks.size(), 1u);
  EXPECT_EQ(back->disks[0].path, "/images/a.qcow2");
  EXPECT_TRUE(back->disks[0].read_only);
  EXPECT_FALSE(ConfigFromJson(nlohmann::json{{"version", 9}}));
}

TEST_F(SnapshotFormatTest, SharedDirsRoundTripAndOlderConfigsHaveNone) {
  SnapshotConfig c = Config();
  nlohmann::json old_style = ConfigToJson(c);
  EXPECT_FALSE(old_style.contains("shared_dirs"));  // nothing new written for VMs without shares
  auto old_back = ConfigFromJson(old_style);
  ASSERT_TRUE(old_back) << old_back.error().message();
  EXPECT_TRUE(old_back->shared_dirs.empty());

  c.virtio_types.push_back(virtio::kDeviceTypeFs);
  c.shared_dirs.push_back({"myfs", "/srv/share", true});
  auto back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(back) << back.error().message();
  ASSERT_EQ(back->shared_dirs.size(), 1u);
  EXPECT_EQ(back->shared_dirs[0], (SnapshotSharedDir{"myfs", "/srv/share", true}));
  EXPECT_FALSE(ConfigToJson(c)["shared_dirs"][0].contains("squash_root"));  // older readers see no change
  c.shared_dirs[0].squash_root = true;
  back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_TRUE(back->shared_dirs[0].squash_root);
  c.shared_dirs[0].squash_root = false;
  // A shared directory without its virtio-fs device (or the reverse) is refused.
  c.shared_dirs.push_back({"other", "/srv/other", false});
  EXPECT_FALSE(ConfigFromJson(ConfigToJson(c)));
}

TEST_F(SnapshotFormatTest, BalloonRoundTripsAndOlderConfigsHaveNone) {
  SnapshotConfig c = Config();
  EXPECT_FALSE(ConfigToJson(c).contains("balloon"));
  auto old_back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(old_back) << old_back.error().message();
  EXPECT_FALSE(old_back->balloon);

  c.virtio_types.push_back(virtio::kDeviceTypeBalloon);
  c.balloon = SnapshotBalloon{false, true, 7};
  auto back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(back->balloon, c.balloon);
  // A balloon without its device, or the device without its options, is refused.
  nlohmann::json no_options = ConfigToJson(c);
  no_options.erase("balloon");
  EXPECT_FALSE(ConfigFromJson(no_options));
  c.virtio_types.pop_back();
  EXPECT_FALSE(ConfigFromJson(ConfigToJson(c)));
  nlohmann::json typo = ConfigToJson(back.value());
  typo["balloon"]["reporting"] = true;
  EXPECT_FALSE(ConfigFromJson(typo));
}

// --- Incremental snapshots ---

class IncrementalSnapshotTest : public SnapshotFormatTest {
 protected:
  static constexpr uint64_t kPages = 24 * kMiB / 4096;

  // Writes full snapshot "base" of Memory() (id "id-base").
  void WriteBase(GuestMemory& mem) {
    SnapshotConfig c = Config();
    c.id = "id-base";
    auto written = Write(dir_.string(), "base", mem, State(), c);
    ASSERT_TRUE(written) << written.error().message();
  }
  // Writes incremental `name` over `parent` holding `pages` of `mem`.
  Result<WriteResult> WriteChild(const std::string& name, const std::string& parent, const std::string& parent_id,
                                 const GuestMemory& mem, const PageBitmap& pages) {
    SnapshotConfig c = Config();
    c.id = "id-" + name;
    c.parent = SnapshotParent{parent, parent_id};
    return Write(dir_.string(), name, mem, State(), c, {}, &pages);
  }
  // The guest memory `name` restores to.
  static Result<GuestMemory> Restored(const Loaded& loaded) {
    return GuestMemory::CreateFromImage(loaded.memory, 24 * kMiB, 16 * kMiB, 32 * kMiB);
  }
  std::string ReadErrorOf(const std::string& name) const {
    auto loaded = Read(dir_.string(), name);
    return loaded ? std::string() : loaded.error().message();
  }
};

TEST_F(IncrementalSnapshotTest, OnlyDirtyPagesAreWrittenAndTheChainRestoresExactly) {
  auto mem = Memory();
  WriteBase(mem);
  // The guest changes three pages after the base: one rewritten, one newly written (in the high
  // region), one zeroed — a zero page the child must still override.
  ASSERT_TRUE(mem.Write<uint64_t>(0x1000, 0x99));
  ASSERT_TRUE(mem.Write<uint32_t>(32 * kMiB + 7 * 4096, 0xcafe));
  ASSERT_TRUE(mem.Write<uint8_t>(15 * kMiB + 17, 0));
  PageBitmap dirty(kPages);
  dirty.Set(1);
  dirty.Set((16 * kMiB + 7 * 4096) / 4096);  // file page of gpa 32 MiB + 7 pages
  dirty.Set(15 * kMiB / 4096);
  auto written = WriteChild("c1", "base", "id-base", mem, dirty);
  ASSERT_TRUE(written) << written.error().message();
  EXPECT_EQ(written->data_bytes, 2 * 4096u);  // the zeroed page is a hole
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "c1" / "memory").c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 1 * kMiB);
  // A second level: one more page.
  ASSERT_TRUE(mem.Write<uint16_t>(0x3000, 0x4242));
  PageBitmap dirty2(kPages);
  dirty2.Set(3);
  ASSERT_TRUE(WriteChild("c2", "c1", "id-c1", mem, dirty2));

  auto loaded = Read(dir_.string(), "c2");
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_EQ(loaded->chain, (std::vector<std::string>{"c2", "c1", "base"}));
  ASSERT_EQ(loaded->memory.layers.size(), 2u);
  EXPECT_EQ(loaded->memory.layers[0].pages, dirty);  // oldest first
  auto restored = Restored(*loaded);
  ASSERT_TRUE(restored) << restored.error().message();
  for (const auto& region : mem.regions()) {
    auto got = restored->Span(region.gpa, region.size);
    ASSERT_EQ(std::memcmp(got.data(), region.host(), region.size), 0) << "region at " << region.gpa;
  }
}

TEST_F(IncrementalSnapshotTest, MissingOrChangedParentIsAClearError) {
  auto mem = Memory();
  WriteBase(mem);
  PageBitmap dirty(kPages);
  dirty.Set(1);
  ASSERT_TRUE(WriteChild("c1", "base", "id-base", mem, dirty));
  ASSERT_TRUE(WriteChild("orphan", "gone", "id-gone", mem, dirty));
  EXPECT_NE(ReadErrorOf("orphan").find("its parent 'gone' cannot be used"), std::string::npos) << ReadErrorOf("orphan");
  EXPECT_NE(ReadErrorOf("orphan").find("no snapshot 'gone'"), std::string::npos);
  // The parent removed and re-taken under the same name: another id.
  fs::remove_all(dir_ / "base");
  SnapshotConfig c = Config();
  c.id = "id-other";
  ASSERT_TRUE(Write(dir_.string(), "base", mem, State(), c));
  EXPECT_NE(ReadErrorOf("c1").find("parent 'base' has changed"), std::string::npos) << ReadErrorOf("c1");
  // A damaged parent is named as the reason.
  fs::remove_all(dir_ / "base");
  WriteBase(mem);
  fs::resize_file(dir_ / "base" / "memory", 4096);
  EXPECT_NE(ReadErrorOf("c1").find("truncated"), std::string::npos) << ReadErrorOf("c1");
  EXPECT_NE(ReadErrorOf("c1").find("parent 'base'"), std::string::npos);
}

TEST_F(IncrementalSnapshotTest, LoopsAreRefused) {
  auto mem = Memory();
  PageBitmap dirty(kPages);
  ASSERT_TRUE(WriteChild("a", "b", "id-b", mem, dirty));
  ASSERT_TRUE(WriteChild("b", "a", "id-a", mem, dirty));
  EXPECT_NE(ReadErrorOf("a").find("loops"), std::string::npos) << ReadErrorOf("a");
}

TEST_F(IncrementalSnapshotTest, StateVersionAndBitmapMustAgree) {
  auto bytes = EncodeStateFile(nlohmann::json::object(), 24 * kMiB, 0);
  EXPECT_EQ(bytes[8], kFormatVersion);
  PageBitmap pages(kPages);
  pages.Set(5);
  bytes = EncodeStateFile(nlohmann::json::object(), 24 * kMiB, 0, &pages);
  EXPECT_EQ(bytes[8], kIncrementalFormatVersion);  // older readers refuse it
  auto body = DecodeStateFile(bytes);
  ASSERT_TRUE(body) << body.error().message();
  ASSERT_TRUE(body->memory_pages);
  EXPECT_EQ(*body->memory_pages, pages);
  // A bitmap of the wrong size for the memory is refused.
  PageBitmap small(kPages - 64);
  EXPECT_FALSE(DecodeStateFile(EncodeStateFile(nlohmann::json::object(), 24 * kMiB, 0, &small)));
  // Write() refuses a parent without pages and pages without a parent.
  auto mem = Memory();
  SnapshotConfig c = Config();
  c.parent = SnapshotParent{"p", "x"};
  EXPECT_FALSE(Write(dir_.string(), "x1", mem, State(), c));
  EXPECT_FALSE(Write(dir_.string(), "x2", mem, State(), Config(), {}, &pages));
  EXPECT_FALSE(fs::exists(dir_ / "x1") || fs::exists(dir_ / "x2"));
}

TEST_F(IncrementalSnapshotTest, MergeMakesAFullSnapshotAndKeepsChildrenValid) {
  auto mem = Memory();
  WriteBase(mem);
  ASSERT_TRUE(mem.Write<uint64_t>(0x5000, 0x77));
  PageBitmap dirty(kPages);
  dirty.Set(5);
  ASSERT_TRUE(WriteChild("c1", "base", "id-base", mem, dirty));
  { std::ofstream(dir_ / "c1" / "disk0.raw") << "frozen disk"; }  // another file of the snapshot
  ASSERT_TRUE(mem.Write<uint64_t>(0x6000, 0x88));
  PageBitmap dirty2(kPages);
  dirty2.Set(6);
  ASSERT_TRUE(WriteChild("c2", "c1", "id-c1", mem, dirty2));

  // rm of a parent is refused, naming the child.
  auto removed = Remove(dir_.string(), "base");
  ASSERT_FALSE(removed);
  EXPECT_NE(removed.error().message().find("'c1'"), std::string::npos) << removed.error().message();
  EXPECT_FALSE(Merge(dir_.string(), "base"));  // already full

  auto merged = Merge(dir_.string(), "c1");
  ASSERT_TRUE(merged) << merged.error().message();
  EXPECT_EQ(merged->data_bytes, 4 * 4096u);  // base's three pages + the new one
  for (const auto& entry : fs::directory_iterator(dir_)) EXPECT_NE(entry.path().filename().string()[0], '.');
  auto loaded = Read(dir_.string(), "c1");
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_FALSE(loaded->config.parent);
  EXPECT_EQ(loaded->config.id, "id-c1");
  EXPECT_TRUE(loaded->memory.layers.empty());
  EXPECT_TRUE(fs::exists(dir_ / "c1" / "disk0.raw"));
  // The parent is no longer needed by c1, and c2 still restores through the merged c1.
  ASSERT_TRUE(Remove(dir_.string(), "base"));
  auto child = Read(dir_.string(), "c2");
  ASSERT_TRUE(child) << child.error().message();
  auto restored = Restored(*child);
  ASSERT_TRUE(restored);
  EXPECT_EQ(*restored->Read<uint64_t>(0x1000), 0x1122334455667788ull);
  EXPECT_EQ(*restored->Read<uint64_t>(0x5000), 0x77u);
  EXPECT_EQ(*restored->Read<uint64_t>(0x6000), 0x88u);
  EXPECT_EQ(*restored->Read<uint32_t>(32 * kMiB + 5 * 4096), 0xdeadbeefu);
}

}  // namespace
}  // namespace clonevm::snapshot
