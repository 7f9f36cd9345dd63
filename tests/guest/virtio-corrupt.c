// virtio-corrupt: a hostile virtio driver run from a stock Linux guest, to prove that a guest which
// corrupts a virtqueue breaks only that device (DEVICE_NEEDS_RESET) and never the VMM.
//
// Usage (root, the device unbound from its driver first, see tests/e2e/virtio_corrupt_test.sh):
//   virtio-corrupt BASE MODE      BASE: the virtio-mmio slot's physical address (hex, /proc/iomem)
//   MODE: loop  a descriptor whose NEXT points at itself
//         oob   a descriptor whose buffer lies outside guest RAM
//         ring  the descriptor table itself placed outside guest RAM (refused at DRIVER_OK)
//
// How, with nothing but a stock kernel: the registers are mapped through /dev/mem (allowed by
// STRICT_DEVMEM and IO_STRICT_DEVMEM once no driver holds the region), the rings live in an
// mlock()ed page of this process whose physical address comes from /proc/self/pagemap (root).
// The program brings the device up by hand (reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK,
// queue 0 with 8 entries, DRIVER_OK), publishes the hostile chain, notifies, and reports
//   CLONE-CORRUPT mode=M status=0xNN needs_reset=0|1
// It exits 0 when the device ended in DEVICE_NEEDS_RESET, 1 otherwise, 2 on a setup error.
// Build: cc -static -O2 -o virtio-corrupt virtio-corrupt.c
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum {
  kMagic = 0x000,
  kVersion = 0x004,
  kDeviceId = 0x008,
  kDeviceFeatures = 0x010,
  kDeviceFeaturesSel = 0x014,
  kDriverFeatures = 0x020,
  kDriverFeaturesSel = 0x024,
  kQueueSel = 0x030,
  kQueueNumMax = 0x034,
  kQueueNum = 0x038,
  kQueueReady = 0x044,
  kQueueNotify = 0x050,
  kStatus = 0x070,
  kQueueDescLow = 0x080,
  kQueueDescHigh = 0x084,
  kQueueDriverLow = 0x090,
  kQueueDriverHigh = 0x094,
  kQueueDeviceLow = 0x0a0,
  kQueueDeviceHigh = 0x0a4,
};
enum { kAck = 1, kDriver = 2, kDriverOk = 4, kFeaturesOk = 8, kNeedsReset = 0x40 };
enum { kDescNext = 1, kDescWrite = 2 };
#define kQueueSize 8

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};

static volatile uint32_t* regs;
static uint32_t rd(unsigned off) { return regs[off / 4]; }
static void wr(unsigned off, uint32_t v) {
  regs[off / 4] = v;
  __sync_synchronize();
}
static int die(const char* what) {
  perror(what);
  return 2;
}
static void wr64(unsigned low, uint64_t v) {
  wr(low, (uint32_t)v);
  wr(low + 4, (uint32_t)(v >> 32));
}

// The physical address of a locked page of ours.
static uint64_t Phys(void* page) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t entry = 0;
  off_t at = (off_t)((uintptr_t)page / 4096) * 8;
  ssize_t n = pread(fd, &entry, sizeof(entry), at);
  close(fd);
  if (n != sizeof(entry) || !(entry >> 63)) return 0;  // bit 63: present
  return (entry & ((1ull << 55) - 1)) * 4096;          // bits 0-54: PFN (0 without CAP_SYS_ADMIN)
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: virtio-corrupt BASE loop|oob|ring\n");
    return 2;
  }
  uint64_t base = strtoull(argv[1], NULL, 16);
  const char* mode = argv[2];
  int mem = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
  if (mem < 0) return die("open /dev/mem");
  void* map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)base);
  if (map == MAP_FAILED) return die("mmap /dev/mem (is a driver still bound?)");
  regs = map;
  if (rd(kMagic) != 0x74726976 || rd(kVersion) != 2) {
    fprintf(stderr, "no virtio-mmio v2 device at 0x%llx\n", (unsigned long long)base);
    return 2;
  }

  uint8_t* page = aligned_alloc(4096, 4096);
  if (page == NULL || mlock(page, 4096) != 0) return die("mlock");
  memset(page, 0, 4096);
  uint64_t phys = Phys(page);
  if (phys == 0) return die("no physical address in /proc/self/pagemap");
  struct desc* table = (struct desc*)page;     // 8 x 16 bytes
  uint16_t* avail = (uint16_t*)(page + 1024);  // flags, idx, ring[8], used_event
  uint64_t desc_gpa = phys, avail_gpa = phys + 1024, used_gpa = phys + 2048;
  if (strcmp(mode, "ring") == 0) desc_gpa = 0xfffffffff000ull;  // far beyond any guest RAM

  wr(kStatus, 0);
  wr(kStatus, kAck);
  wr(kStatus, kAck | kDriver);
  wr(kDeviceFeaturesSel, 1);
  if (!(rd(kDeviceFeatures) & 1)) fprintf(stderr, "device does not offer VERSION_1\n");
  wr(kDriverFeaturesSel, 0);
  wr(kDriverFeatures, 0);
  wr(kDriverFeaturesSel, 1);
  wr(kDriverFeatures, 1);  // VERSION_1 only
  wr(kStatus, kAck | kDriver | kFeaturesOk);
  if (!(rd(kStatus) & kFeaturesOk)) {
    fprintf(stderr, "FEATURES_OK refused\n");
    return 2;
  }
  wr(kQueueSel, 0);
  if (rd(kQueueNumMax) < kQueueSize) return die("queue too small");
  wr(kQueueNum, kQueueSize);
  wr64(kQueueDescLow, desc_gpa);
  wr64(kQueueDriverLow, avail_gpa);
  wr64(kQueueDeviceLow, used_gpa);
  wr(kQueueReady, 1);

  // A virtio-blk IN request header would be readable, data writable; the chain is what matters.
  if (strcmp(mode, "loop") == 0) {
    table[0] = (struct desc){phys + 3072, 16, kDescNext, 1};
    table[1] = (struct desc){phys + 3088, 512, kDescNext | kDescWrite, 1};  // points at itself
  } else if (strcmp(mode, "oob") == 0) {
    table[0] = (struct desc){phys + 3072, 16, kDescNext, 1};
    table[1] = (struct desc){0x7ffffffff000ull, 512, kDescWrite, 0};  // outside guest RAM
  }
  avail[2] = 0;  // ring[0] = head 0
  __sync_synchronize();
  avail[1] = 1;  // idx
  __sync_synchronize();
  wr(kStatus, kAck | kDriver | kFeaturesOk | kDriverOk);
  if (strcmp(mode, "ring") != 0) wr(kQueueNotify, 0);

  uint32_t status = 0;
  for (int i = 0; i < 100; ++i) {  // the notification is served by the VMM's event loop
    status = rd(kStatus);
    if (status & kNeedsReset) break;
    nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
  }
  int needs_reset = (status & kNeedsReset) != 0;
  printf("CLONE-CORRUPT mode=%s status=0x%x needs_reset=%d\n", mode, status, needs_reset);
  wr(kStatus, 0);  // reset: the device forgets the hostile queue
  printf("CLONE-CORRUPT mode=%s after-reset status=0x%x\n", mode, rd(kStatus));
  return needs_reset ? 0 : 1;
}
