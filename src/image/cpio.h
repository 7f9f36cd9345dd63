// CpioWriter: builds a "newc" cpio archive in memory, the format the kernel unpacks as an
// initramfs. Entries are root-owned; the archive ends with TRAILER!!!.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace clonevm {

class CpioWriter {
 public:
  void Directory(const std::string& path, uint32_t mode = 0755);
  void File(const std::string& path, std::span<const uint8_t> data, uint32_t mode = 0644);
  void File(const std::string& path, const std::string& text, uint32_t mode = 0644);
  void Symlink(const std::string& path, const std::string& target);
  void CharDevice(const std::string& path, uint32_t major, uint32_t minor, uint32_t mode = 0600);
  // Appends the trailer and returns the archive; the writer is empty afterwards.
  std::vector<uint8_t> Finish();

 private:
  void Entry(const std::string& path, uint32_t mode, std::span<const uint8_t> data, uint32_t rmajor = 0,
             uint32_t rminor = 0);
  void Pad();
  std::vector<uint8_t> out_;
  uint32_t next_ino_ = 1;
};

}  // namespace clonevm
