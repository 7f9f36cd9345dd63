#!/usr/bin/env python3
"""Writes seed inputs for the virtio fuzzers: well-formed queues and a full driver bring-up, so the
fuzzers start from valid chains instead of discovering the ring layout byte by byte.

Usage: fuzz/make_seeds.py OUT_DIR   (creates OUT_DIR/virtqueue and OUT_DIR/virtio_mmio)
"""
import os
import struct
import sys


def desc(addr, length, flags, nxt):
    return struct.pack('<QIHH', addr, length, flags, nxt)


def ram_image(next_idx):
    """A queue of 4 at desc 0x100 / avail 0x200: a direct chain, an indirect chain, a single buffer."""
    img = bytearray(0x640)
    table = desc(0x400, 16, 1, 1) + desc(0x410, 32, 2, 0) + desc(0x500, 32, 4, 0) + desc(0x440, 8, 2, 0)
    img[0x100:0x100 + len(table)] = table
    ring = [0] * 4
    for i, head in enumerate([0, 2, 3]):
        ring[(next_idx + i) % 4] = head
    img[0x200:0x20e] = struct.pack('<HH4HH', 0, (next_idx + 3) & 0xffff, *ring, 1)
    img[0x500:0x520] = desc(0x600, 8, 1, 1) + desc(0x610, 8, 2, 0)
    return bytes(img)


def virtqueue_seeds():
    # Header: log2(size), flags (bit0 indirect, bit1 event idx, bits 2+ held chains), next_avail,
    # desc/16, avail/8, used/8, ops.
    for name, flags, next_idx in [('indirect_eventidx', 3 | 2 << 2, 0), ('indirect', 1, 0),
                                  ('wrap', 3, 0xfffe), ('direct_only', 2 | 1 << 2, 0)]:
        header = bytes([2, flags, next_idx & 0xff, next_idx >> 8, 0x100 // 16, 0x200 // 8, 0x280 // 8, 8])
        yield name, header + ram_image(next_idx)


def virtio_mmio_seeds():
    writes = [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x24, 0),
              (0x20, 3 << 28), (0x70, 0xb), (0x30, 0), (0x38, 4), (0x80, 0x100), (0x90, 0x200),
              (0xa0, 0x280), (0x44, 1), (0x70, 0xf), (0x50, 0)]
    accesses = b''.join(bytes([0, off // 4]) + struct.pack('<I', val) for off, val in writes)
    accesses += bytes([3, 0, 0, 0, 0, 0])  # notify through the "ioeventfd"
    yield 'bring_up', bytes([len(writes) + 1]) + accesses + ram_image(0)


def main():
    out = sys.argv[1]
    for sub, seeds in [('virtqueue', virtqueue_seeds()), ('virtio_mmio', virtio_mmio_seeds())]:
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        for name, data in seeds:
            with open(os.path.join(out, sub, name), 'wb') as f:
                f.write(data)


if __name__ == '__main__':
    main()
