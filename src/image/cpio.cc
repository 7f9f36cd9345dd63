#include "image/cpio.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <utility>

#include "base/bytes.h"

namespace clonevm {

void CpioWriter::Pad() {
  while (out_.size() % 4 != 0) out_.push_back(0);
}

void CpioWriter::Entry(const std::string& path, uint32_t mode, std::span<const uint8_t> data, uint32_t rmajor,
                       uint32_t rminor) {
  // newc header: magic + 13 eight-digit hex fields (ino, mode, uid, gid, nlink, mtime, filesize,
  // devmajor, devminor, rdevmajor, rdevminor, namesize, check).
  std::string header =
      fmt::format("070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}", next_ino_++,
                  mode, 0, 0, S_ISDIR(mode) ? 2 : 1, 0, data.size(), 0, 0, rmajor, rminor, path.size() + 1, 0);
  out_.insert(out_.end(), header.begin(), header.end());
  out_.insert(out_.end(), path.begin(), path.end());
  out_.push_back(0);
  Pad();
  out_.insert(out_.end(), data.begin(), data.end());
  Pad();
}

void CpioWriter::Directory(const std::string& path, uint32_t mode) { Entry(path, S_IFDIR | mode, {}); }

void CpioWriter::File(const std::string& path, std::span<const uint8_t> data, uint32_t mode) {
  Entry(path, S_IFREG | mode, data);
}

void CpioWriter::File(const std::string& path, const std::string& text, uint32_t mode) {
  File(path, AsBytes(text), mode);
}

void CpioWriter::Symlink(const std::string& path, const std::string& target) {
  Entry(path, S_IFLNK | 0777, AsBytes(target));
}

void CpioWriter::CharDevice(const std::string& path, uint32_t major, uint32_t minor, uint32_t mode) {
  Entry(path, S_IFCHR | mode, {}, major, minor);
}

std::vector<uint8_t> CpioWriter::Finish() {
  Entry("TRAILER!!!", 0, {});
  next_ino_ = 1;
  return std::exchange(out_, {});
}

}  // namespace clonevm
