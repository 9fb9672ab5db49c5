/* The probe's virtio-net driver (net.c) and the few probe.c helpers it borrows.
 *
 * probe.c defines the helpers (its "Exports for net.c" section wraps its own static ones) and
 * calls net_probe for `probe.net=ping|bad` and net_bench for `probe.bench=nettx`. */
#ifndef PROBE_NET_H
#define PROBE_NET_H
#include <stdint.h>

/* From probe.c */
void probe_puts(const char *s);
void probe_putc(char c);
void probe_put_hex(uint64_t v);
void probe_put_dec(uint64_t v);
const char *probe_cmdline_arg(const char *cmdline, const char *key);
int probe_word_is(const char *v, const char *word);
uint64_t probe_parse_dec(const char *v);
uint64_t probe_deadline_ms(uint64_t ms);
uint64_t probe_tsc_khz(const char **source);
/* The first virtio-mmio device with DeviceID `device_id` (DSDT, else virtio_mmio.device= on the
 * command line): returns its index among all virtio devices and sets *base and *gsi, or -1. */
int probe_virtio_find(const char *cmdline, uint64_t rsdp_hint, uint32_t device_id, uint64_t *base, uint32_t *gsi);

/* In net.c */
void net_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode);
void net_bench(const char *cmdline, uint64_t rsdp_hint, uint64_t n);

#endif
