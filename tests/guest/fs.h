/* The probe's virtio-fs driver (fs.c), for `probe.fs=list|test`.
 *
 * fs.c borrows probe.c's printing, command line and deadline helpers (declared in net.h) and
 * the enumeration below; probe.c calls fs_probe from both entry points. */
#ifndef PROBE_FS_H
#define PROBE_FS_H
#include <stdint.h>

#include "net.h" /* probe.c's helpers */

/* From probe.c: the first virtio-mmio device with DeviceID `device_id` whose index among all
 * virtio devices is above `after` (-1: the first of all); returns its index and sets *base and
 * *gsi, or -1. probe_virtio_find is probe_virtio_next with after = -1. */
int probe_virtio_next(const char *cmdline, uint64_t rsdp_hint, uint32_t device_id, int after, uint64_t *base,
                      uint32_t *gsi);

/* In fs.c */
void fs_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode);

#endif
