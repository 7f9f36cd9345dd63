// Sequential read/write throughput of the block backends, as virtio-blk would drive them: one
// request at a time, 4 KiB or 1 MiB, through the page cache, no flush. Not part of ctest.
//   build/src/block/block_bench [--benchmark_filter=qcow2]
// Images go to $CLONE_BENCH_DIR (default /var/tmp) — a real file system, not tmpfs, to be fair.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "block/image.h"
#include "block/qcow2.h"

namespace clonevm {
namespace {

constexpr uint64_t kRegion = 256 << 20;  // bytes cycled through by the loops

enum Op : int64_t { kRead, kWrite, kAllocatingWrite };
enum Fmt : int64_t { kRawImage, kQcow2Image };

std::string BenchPath(std::string_view name) {
  const char* dir = getenv("CLONE_BENCH_DIR");
  return (std::filesystem::path(dir ? dir : "/var/tmp") / ("clone-block-bench-" + std::string(name))).string();
}

// A fresh image of `size` bytes; prefilled (every cluster allocated) unless `empty`.
std::unique_ptr<BlockBackend> MakeImage(benchmark::State& state, Fmt fmt, uint64_t size, bool empty) {
  const std::string path = BenchPath(fmt == kRawImage ? "disk.raw" : "disk.qcow2");
  std::filesystem::remove(path);
  if (fmt == kRawImage) {
    const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) state.SkipWithError("cannot create raw image");
    ::close(fd);
  } else if (auto r = Qcow2Create(path, size); !r) {
    state.SkipWithError(r.error().message().c_str());
    return nullptr;
  }
  auto disk = OpenImage(path);
  std::filesystem::remove(path);  // the open file stays usable; nothing is left behind
  if (!disk) {
    state.SkipWithError(disk.error().message().c_str());
    return nullptr;
  }
  if (!empty) {
    std::vector<uint8_t> chunk(1 << 20, 0xa5);
    for (uint64_t off = 0; off < size; off += chunk.size()) {
      if (!(*disk)->Write(off, chunk)) state.SkipWithError("prefill failed");
    }
  }
  return std::move(*disk);
}

void BM_Sequential(benchmark::State& state) {
  const Fmt fmt = static_cast<Fmt>(state.range(0));
  const Op op = static_cast<Op>(state.range(1));
  const uint64_t block = static_cast<uint64_t>(state.range(2));
  // Allocating writes never wrap: the virtual disk is far larger than what the loop writes.
  const uint64_t size = op == kAllocatingWrite ? (uint64_t{64} << 30) : kRegion;
  auto disk = MakeImage(state, fmt, size, /*empty=*/op == kAllocatingWrite);
  if (!disk) return;
  std::vector<uint8_t> buf(block, 0x5a);
  uint64_t offset = 0;
  for (auto _ : state) {
    auto r = op == kRead ? disk->Read(offset, buf) : disk->Write(offset, buf);
    if (!r) {
      state.SkipWithError(r.error().message().c_str());
      break;
    }
    offset += block;
    if (offset + block > size) offset = 0;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block));
  state.SetLabel(disk->Describe().substr(0, 5));
}

void Args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"fmt(0=raw,1=qcow2)", "op(0=read,1=write,2=alloc)", "block"});
  for (int64_t fmt : {kRawImage, kQcow2Image}) {
    for (int64_t op : {kRead, kWrite, kAllocatingWrite}) {
      for (int64_t block : {4096, 1 << 20}) b->Args({fmt, op, block});
    }
  }
}

BENCHMARK(BM_Sequential)->Apply(Args)->MinTime(0.5);

}  // namespace
}  // namespace clonevm
