/* The probe's virtio-9p driver (p9.c), for `probe.p9=list|test`.
 *
 * p9.c borrows probe.c's printing, command line and deadline helpers (declared in net.h) and
 * its enumeration of virtio-mmio devices (fs.h); probe.c calls p9_probe from both entry points. */
#ifndef PROBE_P9_H
#define PROBE_P9_H
#include <stdint.h>

#include "fs.h" /* probe.c's helpers and probe_virtio_next */

/* In p9.c */
void p9_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode);

#endif
