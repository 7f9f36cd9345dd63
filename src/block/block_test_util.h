// Test-only helpers for the block layer: temp dirs, file bytes, and the real `qemu-img`.
//
// A missing qemu-img is a test failure (install Debian's qemu-utils), never a skip: running it is
// the proof that QEMU and other tools read the images Clone writes, and that Clone reads theirs.
#pragma once

#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/testing/host_tools.h"

namespace clonevm::blocktest {

inline constexpr char kQemuImgMissing[] = "qemu-img not found: install Debian's qemu-utils";

using ::clonevm::host_tools::CommandResult;
using ::clonevm::host_tools::RunCommand;

// A private directory for this layer's tests, removed on destruction.
class TempDir : public ::clonevm::host_tools::TempDir {
 public:
  TempDir() : ::clonevm::host_tools::TempDir("clone-block") {}
};

inline std::string Quote(const std::string& s) { return "'" + s + "'"; }

inline bool HaveQemuImg() { return RunCommand("command -v qemu-img").exit_code == 0; }

// Runs `qemu-img <args>`; the caller asserts on the result.
inline CommandResult QemuImg(const std::string& args) { return RunCommand("qemu-img " + args); }

// Fails the current test unless qemu-img runs `args` successfully.
#define CLONE_QEMU_IMG_OK(args)                                                                \
  do {                                                                                         \
    ASSERT_TRUE(::clonevm::blocktest::HaveQemuImg()) << ::clonevm::blocktest::kQemuImgMissing; \
    auto _qemu = ::clonevm::blocktest::QemuImg(args);                                          \
    ASSERT_EQ(_qemu.exit_code, 0) << "qemu-img " << (args) << "\n" << _qemu.output;            \
  } while (0)

// `qemu-img check` finds no errors and no leaks.
inline void ExpectCheckClean(const std::string& path) {
  ASSERT_TRUE(HaveQemuImg()) << kQemuImgMissing;
  const CommandResult r = QemuImg("check -f qcow2 " + Quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("No errors were found"), std::string::npos) << r.output;
}

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteBytes(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Overwrites bytes of an existing file in place.
inline void PatchBytes(const std::string& path, uint64_t offset, std::span<const uint8_t> bytes) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline void PatchBe64(const std::string& path, uint64_t offset, uint64_t value) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(value >> (56 - 8 * i));
  PatchBytes(path, offset, b);
}

inline void PatchBe32(const std::string& path, uint64_t offset, uint32_t value) {
  uint8_t b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(value >> (24 - 8 * i));
  PatchBytes(path, offset, b);
}

inline uint64_t ReadBe64(const std::string& path, uint64_t offset) {
  const std::vector<uint8_t> bytes = ReadBytes(path);
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | bytes.at(offset + i);
  return v;
}

// Deterministic non-zero-ish bytes that differ per seed and position.
inline std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n);
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; i += 4) {
    const uint32_t r = rng() | 0x01010101;
    std::memcpy(&out[i], &r, std::min<size_t>(4, n - i));
  }
  return out;
}

// `qemu-img convert -O raw` of an image, as bytes.
inline std::vector<uint8_t> ConvertToRaw(const TempDir& dir, const std::string& image) {
  const std::string out = dir.File("converted.raw");
  const CommandResult r = QemuImg("convert -O raw " + Quote(image) + " " + Quote(out));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<uint8_t> bytes = ReadBytes(out);
  std::filesystem::remove(out);
  return bytes;
}

// Index of the first differing byte, or -1 (for readable failure messages on large buffers).
inline int64_t FirstDifference(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0) return -1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

inline uint64_t AllocatedBytes(const std::string& path) {
  struct stat st {};
  ::stat(path.c_str(), &st);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// Runs fn() on a new thread where io_uring_setup(2) fails with EPERM, as under a container's
// seccomp profile: a per-thread seccomp filter (no TSYNC), so the rest of the test is unaffected.
// Returns false if the filter could not be installed.
template <typename Fn>
bool RunWithoutIoUring(Fn&& fn) {
  bool installed = false;
  std::thread worker([&] {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return;
    if (::syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) return;
    installed = true;
    fn();
  });
  worker.join();
  return installed;
}

}  // namespace clonevm::blocktest
