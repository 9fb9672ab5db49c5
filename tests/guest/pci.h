/* The probe's PCI driver (pci.c): config space through CF8/CFC and ECAM, virtio-pci modern
 * devices with MSI-X or INTx, for `probe.pci=list|blk|rng|msix|hostile|intx`.
 *
 * pci.c borrows probe.c's printing and deadline helpers (net.h) and its virtio-blk driver, which
 * it runs on virtio-pci by giving the driver a struct vio_ops: the virtio-mmio register offsets
 * (probe.c's VM_*), answered from the virtio-pci common, ISR, notify and device configuration. */
#ifndef PROBE_PCI_H
#define PROBE_PCI_H
#include <stdint.h>

/* A virtio transport seen through virtio-mmio's register offsets: read (size 4, or 1 for the
 * device configuration at 0x100+) and write. */
struct vio_ops {
    uint32_t (*read)(void *ctx, uint32_t off, int size);
    void (*write)(void *ctx, uint32_t off, uint32_t v);
};

/* From probe.c */
const uint8_t *probe_acpi_table(uint64_t rsdp_hint, const char *sig);
const uint8_t *probe_acpi_dsdt(uint64_t rsdp_hint);
/* Whether the DSDT has the EISA id (e.g. 0x080ad041 for PNP0A08); -1 without a DSDT. */
int probe_dsdt_has_eisaid(uint64_t rsdp_hint, uint32_t id);

/* probe.c's virtio-blk driver (one device at a time, queue 0 in its own memory). `n` is the
 * dev= of its report lines. */
struct blk;
struct blk *probe_blk_open(int n, const struct vio_ops *ops, void *ctx);
const char *probe_blk_init(struct blk *b);    /* reset .. DRIVER_OK; 0 or why not */
void probe_blk_test(struct blk *b);           /* what probe.blk=test does on a disk (ends reset) */
void probe_blk_reset(struct blk *b);
void probe_blk_post_read(struct blk *b, uint64_t sector, uint32_t len); /* made available, not notified */
void probe_blk_notify(struct blk *b);
int probe_blk_used(struct blk *b);            /* whether a used element waits */
int probe_blk_reap(struct blk *b, uint64_t ms); /* its status byte, or -1 at the deadline */
/* A read of `len` bytes at `sector`, waited for: its status (-1: timeout), *fnv its data's hash. */
int probe_blk_read(struct blk *b, uint64_t sector, uint32_t len, uint64_t *fnv);
uint64_t probe_blk_capacity(const struct blk *b);

/* In pci.c */
void pci_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode);
/* For probe.bench=blk* probe.transport=pci: the `devi`th virtio-blk PCI function, its BARs
 * assigned from the host bridge's window if they were not (no firmware), memory decode and bus
 * mastering on, MSI-X enabled with no vectors. Returns its index among the virtio functions and
 * sets ops and ctx for probe.c's driver, or sets why (ops untouched). */
int pci_blk_find(uint64_t rsdp_hint, int devi, const struct vio_ops **ops, void **ctx, const char **why);

#endif
