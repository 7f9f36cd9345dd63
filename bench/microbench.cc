// Micro-benchmarks of hot host-side paths (Google Benchmark). Boot/fork/IO benchmarks that need
// a guest are scripts beside this file (bench/boot, ...).
#include <benchmark/benchmark.h>

#include "arch/x86/cpu_setup.h"
#include "arch/x86/layout.h"
#include "devices/bus.h"
#include "devices/legacy/serial.h"

namespace clonevm {
namespace {

// A guest console write: bus lookup + 16550 THR register write, the path every printk byte takes.
void BM_SerialTransmitThroughBus(benchmark::State& state) {
  Bus bus;
  size_t sent = 0;
  auto serial = std::make_shared<Serial>([&](std::span<const uint8_t> b) { sent += b.size(); }, [](bool) {});
  (void)bus.Insert(0x3f8, 8, serial);
  uint8_t byte = 'x';
  for (auto _ : state) bus.Write(0x3f8, std::span(&byte, 1));
  benchmark::DoNotOptimize(sent);
}
BENCHMARK(BM_SerialTransmitThroughBus);

// Writing boot page tables for a 4 GiB guest: part of every cold boot.
void BM_WritePageTables4G(benchmark::State& state) {
  auto mem = std::move(*GuestMemory::Create(4 * x86::kGiB, x86::kMmioHoleStart, x86::kHighRamStart));
  for (auto _ : state) benchmark::DoNotOptimize(x86::WritePageTables(mem));
}
BENCHMARK(BM_WritePageTables4G);

}  // namespace
}  // namespace clonevm
