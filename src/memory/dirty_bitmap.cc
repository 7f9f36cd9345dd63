#include "memory/dirty_bitmap.h"

#include <bit>
#include <cstring>

#include "base/check.h"

namespace clonevm {

Result<PageBitmap> PageBitmap::FromBytes(std::span<const uint8_t> bytes, uint64_t pages) {
  PageBitmap bitmap(pages);
  if (bytes.size() != bitmap.words_.size() * 8) {
    return Fail("page bitmap has {} bytes, {} expected for {} pages", bytes.size(), bitmap.words_.size() * 8, pages);
  }
  for (size_t w = 0; w < bitmap.words_.size(); ++w) {
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(bytes[w * 8 + b]) << (8 * b);
    bitmap.words_[w] = v;
  }
  if (pages % 64 != 0 && !bitmap.words_.empty() && (bitmap.words_.back() >> (pages % 64)) != 0) {
    return Fail("page bitmap marks pages past the end ({} pages)", pages);
  }
  return bitmap;
}

std::vector<uint8_t> PageBitmap::ToBytes() const {
  std::vector<uint8_t> bytes(words_.size() * 8);
  for (size_t w = 0; w < words_.size(); ++w) {
    for (int b = 0; b < 8; ++b) bytes[w * 8 + b] = static_cast<uint8_t>(words_[w] >> (8 * b));
  }
  return bytes;
}

void PageBitmap::SetRange(uint64_t first, uint64_t count) {
  uint64_t end = first + count < first ? pages_ : std::min(pages_, first + count);
  for (uint64_t p = first; p < end;) {
    if (p % 64 == 0 && end - p >= 64) {
      words_[p / 64] = ~uint64_t{0};
      p += 64;
    } else {
      Set(p++);
    }
  }
}

void PageBitmap::Or(const PageBitmap& other) {
  CLONE_CHECK(other.pages_ == pages_);
  for (size_t w = 0; w < words_.size(); ++w) words_[w] |= other.words_[w];
}

uint64_t PageBitmap::Count() const {
  uint64_t n = 0;
  for (uint64_t w : words_) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

std::vector<std::pair<uint64_t, uint64_t>> PageBitmap::Runs() const {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  uint64_t p = 0;
  while (p < pages_) {
    uint64_t w = words_[p / 64] >> (p % 64);
    if (w == 0) {  // skip the rest of this word
      p = (p / 64 + 1) * 64;
      continue;
    }
    p += static_cast<uint64_t>(std::countr_zero(w));
    uint64_t start = p;
    while (p < pages_ && Test(p)) {
      if (p % 64 == 0 && p + 64 <= pages_ && words_[p / 64] == ~uint64_t{0}) {
        p += 64;
      } else {
        ++p;
      }
    }
    runs.emplace_back(start, p - start);
  }
  return runs;
}

Result<std::unique_ptr<DirtyLog>> DirtyLog::Create(uint64_t limit_gpa) {
  uint64_t pages = (limit_gpa + kDirtyPageSize - 1) / kDirtyPageSize;
  uint64_t bytes = std::max<uint64_t>((pages + 63) / 64 * 8, 8);
  Mmap words = CLONE_TRY(Mmap::Anonymous(bytes));
  return std::unique_ptr<DirtyLog>(new DirtyLog(std::move(words), pages));
}

void DirtyLog::Mark(uint64_t gpa, uint64_t len) {
  if (len == 0 || gpa / kDirtyPageSize >= pages_) return;
  uint64_t first = gpa / kDirtyPageSize;
  uint64_t last = std::min(pages_ - 1, (gpa + len - 1 < gpa ? UINT64_MAX : gpa + len - 1) / kDirtyPageSize);
  for (uint64_t p = first; p <= last;) {
    uint64_t bit = p % 64;
    uint64_t n = std::min<uint64_t>(64 - bit, last - p + 1);
    uint64_t mask = (n == 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1)) << bit;
    Word(p / 64).fetch_or(mask, std::memory_order_relaxed);
    p += n;
  }
}

PageBitmap DirtyLog::TakeAll() {
  PageBitmap out(pages_);
  std::span<uint64_t> words = out.words();
  for (size_t w = 0; w < words.size(); ++w) words[w] = Word(w).exchange(0, std::memory_order_acq_rel);
  if (incomplete()) out.SetRange(0, pages_);
  return out;
}

}  // namespace clonevm
