/* PCI and virtio-pci (modern, virtio 1.2 4.1) for the probe guest: `probe.pci=<mode>`.
 *
 * Config space is read through both the legacy mechanism (CF8/CFC) and ECAM (its base from the
 * ACPI MCFG table). virtio-pci devices are found by their capabilities (a driver must walk the
 * list), and probe.c's virtio-blk driver runs on them through `vio_ops` (pci.h): the virtio-mmio
 * register offsets answered from the common configuration, ISR, notify and device regions.
 * Interrupts are checked without taking them first: the LAPIC's IRR says whether a vector is
 * pending, and a small IDT (vectors 0x20..0xff, each counted and EOI'd) takes them in a short
 * `sti` window so the next check starts clean. Every wait has a deadline.
 *
 * Modes (report lines start with "PROBE: pci "):
 *   list     every function of bus 0, both mechanisms compared dword for dword, capabilities
 *   blk      probe.blk=test's checks on each virtio-blk function, with MSI-X delivery checked
 *   rng      two 64-byte requests to virtio-rng
 *   msix     entry and function masking (PBA), retargeting, vectors beyond the table
 *   hostile  config-space sweeps, BAR sizing and moves, MSI-X table abuse, decode off mid-I/O,
 *            then the device must still work
 *   intx     MSI-X off: level-triggered INTx through the IOAPIC, the ISR byte deasserting it
 *
 * probe.c's bench_blk also runs here (probe.transport=pci, see pci_blk_find), on ours and on
 * QEMU's virtio-blk-pci, whose regions may be in any BAR (QEMU: BAR4, MSI-X in BAR1); under
 * QEMU's microvm,pcie=on nothing assigned the BARs and there is no MCFG, so the ECAM and the
 * window come from the DSDT and the probe places the BARs itself. */
#include <stdint.h>

#include "net.h"
#include "pci.h"

#define puts_ probe_puts
#define putc_ probe_putc
#define put_dec probe_put_dec

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline uint8_t r8(uint64_t a) { return *(volatile uint8_t *)(uintptr_t)a; }
static inline uint16_t r16(uint64_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static inline uint32_t r32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }
static inline void w8(uint64_t a, uint8_t v) { *(volatile uint8_t *)(uintptr_t)a = v; }
static inline void w16(uint64_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static inline void w32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }
static inline void w64(uint64_t a, uint64_t v) { *(volatile uint64_t *)(uintptr_t)a = v; }
#define barrier() __asm__ volatile("" ::: "memory")
static inline void pause(void) { __asm__ volatile("pause"); }

/* ---- Printing ------------------------------------------------------------------------- */

static void put_hx(uint64_t v) { /* 0x, then no leading zeros */
    int i = 60;
    puts_("0x");
    while (i > 0 && !((v >> i) & 0xf)) i -= 4;
    for (; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 0xf]);
}
static void put_hexw(uint64_t v, int digits) { /* exactly `digits`, no 0x */
    for (int i = (digits - 1) * 4; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 0xf]);
}
static void put_bdf(uint32_t bdf) {
    put_hexw(bdf >> 8, 2);
    putc_(':');
    put_hexw((bdf >> 3) & 0x1f, 2);
    putc_('.');
    put_hexw(bdf & 7, 1);
}
static void line(const char *what, uint32_t bdf) { /* "PROBE: pci <what> 00:01.0" */
    puts_("PROBE: pci ");
    puts_(what);
    putc_(' ');
    put_bdf(bdf);
}
static void kv(const char *key, uint64_t v) { putc_(' '); puts_(key); putc_('='); put_hx(v); }
static void kd(const char *key, uint64_t v) { putc_(' '); puts_(key); putc_('='); put_dec(v); }
static void ks(const char *key, const char *v) { putc_(' '); puts_(key); putc_('='); puts_(v); }
static void kst(const char *key, int st) { /* a blk status, or "timeout" */
    if (st < 0) ks(key, "timeout");
    else kd(key, (uint64_t)st);
}

/* ---- Config space: CF8/CFC and ECAM ----------------------------------------------------- */

/* A function as bus << 8 | device << 3 | function. */
#define BDF(d, f) ((uint32_t)(d) << 3 | (uint32_t)(f))

static uint64_t ecam; /* from MCFG; 0 without one */

/* Offsets past 0xff go to bits 27:24, where AMD's extended CF8 puts them (the VMM should
 * ignore the reserved bits; the hostile sweep sends them anyway). */
static uint32_t cf8_addr(uint32_t bdf, uint32_t reg) { return 0x80000000u | bdf << 8 | (reg & 0xfc) | (reg & 0xf00) << 16; }
static uint32_t cf8_read(uint32_t bdf, uint32_t reg, int size) {
    outl(0xcf8, cf8_addr(bdf, reg));
    uint16_t port = (uint16_t)(0xcfc + (reg & 3));
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}
static void cf8_write(uint32_t bdf, uint32_t reg, int size, uint32_t v) {
    outl(0xcf8, cf8_addr(bdf, reg));
    uint16_t port = (uint16_t)(0xcfc + (reg & 3));
    if (size == 1) outb(port, (uint8_t)v);
    else if (size == 2) outw(port, (uint16_t)v);
    else outl(port, v);
}
static uint64_t ecam_addr(uint32_t bdf, uint32_t reg) { return ecam + ((uint64_t)bdf << 12) + reg; }
static uint32_t ecam_read(uint32_t bdf, uint32_t reg, int size) {
    uint64_t a = ecam_addr(bdf, reg);
    return size == 1 ? r8(a) : size == 2 ? r16(a) : r32(a);
}
static void ecam_write(uint32_t bdf, uint32_t reg, int size, uint32_t v) {
    uint64_t a = ecam_addr(bdf, reg);
    if (size == 1) w8(a, (uint8_t)v);
    else if (size == 2) w16(a, (uint16_t)v);
    else w32(a, v);
}
/* The driver's own accesses: ECAM when there is one, else CF8. */
static uint32_t cfg_r(uint32_t bdf, uint32_t reg, int size) { return ecam ? ecam_read(bdf, reg, size) : cf8_read(bdf, reg, size); }
static void cfg_w(uint32_t bdf, uint32_t reg, int size, uint32_t v) {
    if (ecam) ecam_write(bdf, reg, size, v);
    else cf8_write(bdf, reg, size, v);
}

static void find_ecam(uint64_t rsdp_hint) {
    const uint8_t *mcfg = probe_acpi_table(rsdp_hint, "MCFG");
    ecam = 0;
    puts_("PROBE: pci mcfg");
    if (!mcfg) { puts_(" none\n"); return; }
    uint32_t len = *(const uint32_t *)(mcfg + 4);
    uint32_t n = len >= 44 ? (len - 44) / 16 : 0;
    kd("entries", n);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = mcfg + 44 + 16 * i;
        uint64_t base = *(const uint64_t *)e;
        uint16_t seg = *(const uint16_t *)(e + 8);
        kv("base", base);
        kd("segment", seg);
        kd("bus_start", e[10]);
        kd("bus_end", e[11]);
        if (seg == 0 && e[10] == 0 && !ecam) ecam = base;
    }
    putc_('\n');
}

/* ---- Enumeration ------------------------------------------------------------------------ */

#define MAXF 64
struct pfn { uint32_t bdf; int via; /* 1: CF8 saw it, 2: ECAM, 3: both */ };
static struct pfn fns[MAXF];
static int nfns;

static int present(uint32_t id) { return (id & 0xffff) != 0xffff && (id & 0xffff) != 0; }

static void scan(void) {
    nfns = 0;
    for (uint32_t d = 0; d < 32; d++) {
        for (uint32_t f = 0; f < 8; f++) {
            uint32_t bdf = BDF(d, f);
            int via = present(cf8_read(bdf, 0, 4)) | (ecam && present(ecam_read(bdf, 0, 4))) << 1;
            if (!via) { if (f == 0) break; continue; }
            if (nfns < MAXF) fns[nfns++] = (struct pfn){bdf, via};
            if (f == 0 && !(cfg_r(bdf, 0x0e, 1) & 0x80)) break; /* single-function */
        }
    }
}

/* ---- A virtio-pci function -------------------------------------------------------------- */

#define VIRTIO_VENDOR 0x1af4
struct vpci {
    uint32_t bdf;
    int idx; /* among the virtio functions, in slot order (= the VM's device order) */
    uint16_t device;
    uint64_t bar0;
    uint64_t bars[6]; /* the other BARs' addresses (a 64-bit BAR's at its low half), as opened */
    int ok; /* the four regions found, each in an assigned BAR */
    uint8_t cbar, ibar, dbar, nbar; /* the BAR each region is in (ours: all BAR0; QEMU: BAR4) */
    uint8_t cap_msix, cap_pcicfg;
    uint32_t common, isr, devcfg, notify, notify_mult; /* offsets in their BARs */
    uint32_t common_len, isr_len, devcfg_len, notify_len;
    uint32_t msix_size, msix_table, msix_pba;
    /* The vio_ops state: vectors given to the device when a queue is enabled (msix) */
    int msix;
    uint16_t cfg_vec, q_vec, cfg_vec_rb, q_vec_rb;
    uint16_t qsel, qmax[8], qnoff[8];
    uint8_t qset[8];
};

static uint64_t bar0_addr(uint32_t bdf) {
    uint32_t lo = cfg_r(bdf, 0x10, 4);
    uint64_t hi = (lo & 6) == 4 ? cfg_r(bdf, 0x14, 4) : 0;
    return hi << 32 | (lo & ~0xfu);
}
/* BAR `i`'s address (with the next one as its high half when it is a 64-bit memory BAR); 0 for
 * an I/O BAR. */
static uint64_t bar_addr(uint32_t bdf, int i) {
    uint32_t lo = cfg_r(bdf, 0x10 + 4 * (uint32_t)i, 4);
    if (lo & 1) return 0;
    uint64_t hi = (lo & 6) == 4 && i < 5 ? cfg_r(bdf, 0x14 + 4 * (uint32_t)i, 4) : 0;
    return hi << 32 | (lo & ~0xfu);
}
static void bar0_set(uint32_t bdf, uint64_t a) {
    cfg_w(bdf, 0x10, 4, (uint32_t)a);
    cfg_w(bdf, 0x14, 4, (uint32_t)(a >> 32));
}

/* (A switch, not a table of pointers: nothing here may need relocating, see probe.c.) */
static const char *cap_name(uint8_t type) {
    switch (type) {
    case 1: return "common";
    case 2: return "notify";
    case 3: return "isr";
    case 4: return "device";
    case 5: return "pcicfg";
    case 8: return "shm";
    case 9: return "vendor";
    }
    return "?";
}

/* Walks the capability list; `print` reports one line per capability. */
static void vpci_open(struct vpci *p, uint32_t bdf, int idx, int print) {
    *p = (struct vpci){0};
    p->bdf = bdf;
    p->idx = idx;
    p->device = (uint16_t)cfg_r(bdf, 2, 2);
    p->bar0 = bar0_addr(bdf);
    for (int i = 1; i < 6; i++) p->bars[i] = bar_addr(bdf, i);
    int have = 0;
    uint32_t ptr = (cfg_r(bdf, 6, 2) & 0x10) ? cfg_r(bdf, 0x34, 1) & 0xfc : 0;
    for (int n = 0; ptr && n < 48; n++) {
        uint8_t id = (uint8_t)cfg_r(bdf, ptr, 1), next = (uint8_t)cfg_r(bdf, ptr + 1, 1);
        if (print) { line("cap", bdf); kv("at", ptr); kv("id", id); }
        if (id == 0x11) {
            uint16_t ctl = (uint16_t)cfg_r(bdf, ptr + 2, 2);
            p->cap_msix = (uint8_t)ptr;
            p->msix_size = (ctl & 0x7ffu) + 1;
            p->msix_table = cfg_r(bdf, ptr + 4, 4);
            p->msix_pba = cfg_r(bdf, ptr + 8, 4);
            if (print) { ks("type", "msix"); kd("size", p->msix_size); kv("ctl", ctl); kv("table", p->msix_table); kv("pba", p->msix_pba); }
        } else if (id == 0x09) {
            uint8_t type = (uint8_t)cfg_r(bdf, ptr + 3, 1), bar = (uint8_t)cfg_r(bdf, ptr + 4, 1);
            uint32_t len = cfg_r(bdf, ptr + 2, 1), off = cfg_r(bdf, ptr + 8, 4), length = cfg_r(bdf, ptr + 12, 4);
            if (print) { ks("type", cap_name(type)); kd("cap_len", len); kd("bar", bar); kv("offset", off); kv("length", length); }
            if (type == 5) p->cap_pcicfg = (uint8_t)ptr;
            else if (type >= 1 && type <= 4 && bar < 6 && !(have & 1 << type)) {
                have |= 1 << type;
                if (type == 1) { p->common = off; p->common_len = length; p->cbar = bar; }
                if (type == 2) {
                    p->nbar = bar;
                    p->notify = off;
                    p->notify_len = length;
                    p->notify_mult = cfg_r(bdf, ptr + 16, 4);
                    if (print) kd("multiplier", p->notify_mult);
                }
                if (type == 3) { p->isr = off; p->isr_len = length; p->ibar = bar; }
                if (type == 4) { p->devcfg = off; p->devcfg_len = length; p->dbar = bar; }
            }
        }
        if (print) putc_('\n');
        ptr = next & 0xfcu;
    }
    p->ok = have == 0x1e;
    const uint8_t used[4] = {p->cbar, p->ibar, p->dbar, p->nbar};
    for (int i = 0; i < 4; i++) if (!(used[i] ? p->bars[used[i]] : p->bar0)) p->ok = 0;
}

/* Where a region (or the MSI-X table, by its BIR) is: BAR0 as it is now (the hostile mode
 * moves it), the others as opened. */
static uint64_t bar_of(const struct vpci *p, uint32_t i) { return i ? p->bars[i % 6] : p->bar0; }
static uint64_t isr_addr(const struct vpci *p) { return bar_of(p, p->ibar) + p->isr; }

/* Common configuration (virtio 1.2, 4.1.4.3) */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX_CONFIG 0x10
#define CC_NUMQ 0x12
#define CC_STATUS 0x14
#define CC_GENERATION 0x15
#define CC_Q_SELECT 0x16
#define CC_Q_SIZE 0x18
#define CC_Q_MSIX 0x1a
#define CC_Q_ENABLE 0x1c
#define CC_Q_NOFF 0x1e
#define CC_Q_DESC 0x20
#define CC_Q_DRIVER 0x28
#define CC_Q_DEVICE 0x30
#define NO_VECTOR 0xffffu

static uint64_t cc(const struct vpci *p, uint32_t off) { return bar_of(p, p->cbar) + p->common + off; }

/* virtio-mmio's register offsets (probe.c's VM_*), which vio_ops answers */
#define MM_MAGIC 0x000
#define MM_VERSION 0x004
#define MM_DEVICE_ID 0x008
#define MM_VENDOR_ID 0x00c
#define MM_DEVICE_FEATURES 0x010
#define MM_DEVICE_FEATURES_SEL 0x014
#define MM_DRIVER_FEATURES 0x020
#define MM_DRIVER_FEATURES_SEL 0x024
#define MM_QUEUE_SEL 0x030
#define MM_QUEUE_NUM_MAX 0x034
#define MM_QUEUE_NUM 0x038
#define MM_QUEUE_READY 0x044
#define MM_QUEUE_NOTIFY 0x050
#define MM_INTERRUPT_STATUS 0x060
#define MM_INTERRUPT_ACK 0x064
#define MM_STATUS 0x070
#define MM_QUEUE_DESC 0x080
#define MM_QUEUE_DRIVER 0x090
#define MM_QUEUE_DEVICE 0x0a0
#define MM_CONFIG_GENERATION 0x0fc
#define MM_CONFIG 0x100

static void vp_notify(const struct vpci *p, uint16_t q) {
    __asm__ volatile("mfence" ::: "memory");
    w16(bar_of(p, p->nbar) + p->notify + (uint32_t)p->qnoff[q & 7] * p->notify_mult, q);
}

static uint32_t shim_read(void *ctx, uint32_t off, int size) {
    struct vpci *p = ctx;
    uint16_t q = p->qsel & 7;
    switch (off) {
    case MM_MAGIC: return 0x74726976u;
    case MM_VERSION: return 2;
    case MM_DEVICE_ID: return p->device >= 0x1040 ? p->device - 0x1040u : 0;
    case MM_VENDOR_ID: return cfg_r(p->bdf, 0, 2);
    case MM_DEVICE_FEATURES: return r32(cc(p, CC_DF));
    case MM_QUEUE_NUM_MAX:
        if (!p->qset[q]) p->qmax[q] = r16(cc(p, CC_Q_SIZE)); /* the maximum until the driver writes one */
        return p->qmax[q];
    case MM_QUEUE_READY: return r16(cc(p, CC_Q_ENABLE));
    case MM_INTERRUPT_STATUS: return r8(isr_addr(p));
    case MM_STATUS: return r8(cc(p, CC_STATUS));
    case MM_CONFIG_GENERATION: return r8(cc(p, CC_GENERATION));
    }
    if (off >= MM_CONFIG) {
        uint64_t a = bar_of(p, p->dbar) + p->devcfg + off - MM_CONFIG;
        return size == 1 ? r8(a) : r32(a);
    }
    return 0;
}

static void shim_write(void *ctx, uint32_t off, uint32_t v) {
    struct vpci *p = ctx;
    uint16_t q = p->qsel & 7;
    switch (off) {
    case MM_DEVICE_FEATURES_SEL: w32(cc(p, CC_DFSELECT), v); break;
    case MM_DRIVER_FEATURES_SEL: w32(cc(p, CC_GFSELECT), v); break;
    case MM_DRIVER_FEATURES: w32(cc(p, CC_GF), v); break;
    case MM_QUEUE_SEL: p->qsel = (uint16_t)v; w16(cc(p, CC_Q_SELECT), (uint16_t)v); break;
    case MM_QUEUE_NUM:
        if (!p->qset[q]) p->qmax[q] = r16(cc(p, CC_Q_SIZE));
        p->qset[q] = 1;
        w16(cc(p, CC_Q_SIZE), (uint16_t)v);
        break;
    case MM_QUEUE_DESC: case MM_QUEUE_DESC + 4: w32(cc(p, CC_Q_DESC + off - MM_QUEUE_DESC), v); break;
    case MM_QUEUE_DRIVER: case MM_QUEUE_DRIVER + 4: w32(cc(p, CC_Q_DRIVER + off - MM_QUEUE_DRIVER), v); break;
    case MM_QUEUE_DEVICE: case MM_QUEUE_DEVICE + 4: w32(cc(p, CC_Q_DEVICE + off - MM_QUEUE_DEVICE), v); break;
    case MM_QUEUE_READY:
        if (v && p->msix) {
            w16(cc(p, CC_MSIX_CONFIG), p->cfg_vec);
            p->cfg_vec_rb = r16(cc(p, CC_MSIX_CONFIG));
            w16(cc(p, CC_Q_MSIX), p->q_vec);
            p->q_vec_rb = r16(cc(p, CC_Q_MSIX));
        }
        p->qnoff[q] = r16(cc(p, CC_Q_NOFF));
        w16(cc(p, CC_Q_ENABLE), (uint16_t)v);
        break;
    case MM_QUEUE_NOTIFY: vp_notify(p, (uint16_t)v); break;
    case MM_INTERRUPT_ACK: break; /* reading the ISR byte acknowledged it */
    case MM_STATUS:
        w8(cc(p, CC_STATUS), (uint8_t)v);
        if (!v) for (int i = 0; i < 8; i++) p->qset[i] = 0;
        break;
    }
}

/* Filled in by pci_probe: a static initializer would hold link-time addresses, wrong where the
 * bzImage flavour runs. */
static struct vio_ops shim_ops;

static void vp_reset(struct vpci *p) {
    w8(cc(p, CC_STATUS), 0);
    for (int i = 0; i < 1000000 && r8(cc(p, CC_STATUS)); i++) pause();
    for (int i = 0; i < 8; i++) p->qset[i] = 0;
}

/* ---- Interrupts: the LAPIC, a counting IDT, the IOAPIC ---------------------------------- */

#define LAPIC 0xfee00000u
#define IOAPIC 0xfec00000u
static uint32_t lapic_r(uint32_t reg) { return r32(LAPIC + reg); }
static void lapic_w(uint32_t reg, uint32_t v) { w32(LAPIC + reg, v); }
static int lapic_bit(uint32_t base, uint32_t vec) { return (lapic_r(base + 0x10 * (vec >> 5)) >> (vec & 31)) & 1; }
static int irr(uint32_t vec) { return lapic_bit(0x200, vec); }
static int tmr(uint32_t vec) { return lapic_bit(0x180, vec); }
static int lapic_isr(uint32_t vec) { return lapic_bit(0x100, vec); }

static uint32_t apic_id(void) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    return b >> 24;
}

static volatile uint32_t irq_count[256];
static volatile uint32_t irq_mask_pin = 0xffffffffu; /* the handler masks this IOAPIC pin first */

static uint32_t ioapic_r(uint32_t reg) { w32(IOAPIC, reg); return r32(IOAPIC + 0x10); }
static void ioapic_w(uint32_t reg, uint32_t v) { w32(IOAPIC, reg); w32(IOAPIC + 0x10, v); }

void pci_irq(uint64_t vec); /* called by the stubs below */
void pci_irq(uint64_t vec) {
    irq_count[vec & 0xff]++;
    if (irq_mask_pin < 24) ioapic_w(0x10 + 2 * irq_mask_pin, ioapic_r(0x10 + 2 * irq_mask_pin) | 1u << 16);
    lapic_w(0xb0, 0); /* EOI */
}

/* One 16-byte stub per vector 0x20..0xff: push the vector, save the caller-saved registers,
 * pci_irq(vector), iretq. The CPU aligned the stack before its 5-word frame, so after the
 * vector and nine registers it is 8 off: sub 8 before the call. */
__asm__(".text\n"
        ".balign 16\n"
        "pci_irq_stubs:\n"
        ".set pci_vec, 0x20\n"
        ".rept 0xe0\n"
        ".balign 16\n"
        "pushq $pci_vec\n"
        "jmp pci_irq_common\n"
        ".set pci_vec, pci_vec + 1\n"
        ".endr\n"
        "pci_irq_common:\n"
        "push %rax\n push %rcx\n push %rdx\n push %rsi\n push %rdi\n"
        "push %r8\n push %r9\n push %r10\n push %r11\n"
        "mov 72(%rsp), %rdi\n"
        "sub $8, %rsp\n"
        "call pci_irq\n"
        "add $8, %rsp\n"
        "pop %r11\n pop %r10\n pop %r9\n pop %r8\n"
        "pop %rdi\n pop %rsi\n pop %rdx\n pop %rcx\n pop %rax\n"
        "add $8, %rsp\n"
        "iretq\n");

struct gate { uint16_t off0, sel; uint8_t ist, type; uint16_t off1; uint32_t off2, zero; } __attribute__((packed));
static struct gate idt[256] __attribute__((aligned(16)));

static void irq_setup(void) {
    static int done;
    if (done) return;
    done = 1;
    uint64_t stubs;
    uint16_t cs;
    __asm__ volatile("lea pci_irq_stubs(%%rip), %0" : "=r"(stubs));
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int v = 0x20; v < 256; v++) {
        uint64_t a = stubs + 16 * (uint64_t)(v - 0x20);
        idt[v] = (struct gate){(uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0};
    }
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) d = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
    outb(0x21, 0xff); /* the 8259s masked: only what the tests send arrives */
    outb(0xa1, 0xff);
    lapic_w(0x80, 0);     /* TPR */
    lapic_w(0xf0, 0x1ff); /* software-enabled, spurious vector 0xff */
}

/* Whether `vec` is pending in the IRR within `ms` (the device signals after it fills the used
 * ring, so the used element can come first). */
static int irr_wait(uint32_t vec, uint64_t ms) {
    uint64_t end = probe_deadline_ms(ms);
    while (!irr(vec)) {
        if (rdtsc() > end) return 0;
        pause();
    }
    return 1;
}
/* Takes pending interrupts for up to `ms` in an sti window, until `vec` came; returns how
 * many times `vec` was taken. */
static uint32_t irq_take(uint32_t vec, uint64_t ms) {
    uint32_t before = irq_count[vec];
    uint64_t end = probe_deadline_ms(ms);
    __asm__ volatile("sti" ::: "memory");
    while (irq_count[vec] == before && rdtsc() < end) pause();
    __asm__ volatile("cli" ::: "memory");
    return irq_count[vec] - before;
}
/* Lets whatever is pending in, for `ms`: nothing stays in the IRR. */
static void irq_drain(uint64_t ms) {
    uint64_t end = probe_deadline_ms(ms);
    __asm__ volatile("sti" ::: "memory");
    while (rdtsc() < end) pause();
    __asm__ volatile("cli" ::: "memory");
}

/* ---- MSI-X ------------------------------------------------------------------------------ */

static uint64_t msix_entry_addr(const struct vpci *p, uint32_t i) { return bar_of(p, p->msix_table & 7) + (p->msix_table & ~7u) + 16 * i; }
static void msix_entry(const struct vpci *p, uint32_t i, uint32_t vec, int masked) {
    uint64_t e = msix_entry_addr(p, i);
    w32(e + 12, 1); /* masked while it changes */
    w32(e, 0xfee00000u | apic_id() << 12);
    w32(e + 4, 0);
    w32(e + 8, vec);
    w32(e + 12, masked ? 1 : 0);
}
static void msix_mask(const struct vpci *p, uint32_t i, int masked) { w32(msix_entry_addr(p, i) + 12, masked ? 1 : 0); }
static void msix_ctl(const struct vpci *p, int enable, int fmask) {
    uint32_t ctl = cfg_r(p->bdf, p->cap_msix + 2u, 2) & 0x3fffu;
    cfg_w(p->bdf, p->cap_msix + 2u, 2, ctl | (uint32_t)enable << 15 | (uint32_t)fmask << 14);
}
static int pba(const struct vpci *p, uint32_t i) { return (r32(bar_of(p, p->msix_pba & 7) + (p->msix_pba & ~7u) + 4 * (i / 32)) >> (i % 32)) & 1; }
static int pba_wait(const struct vpci *p, uint32_t i, int want, uint64_t ms) {
    uint64_t end = probe_deadline_ms(ms);
    while (pba(p, i) != want) {
        if (rdtsc() > end) return !want;
        pause();
    }
    return want;
}

/* The blk driver on `p` with MSI-X: entry 0 (config) -> cv, entry 1 (queue 0) -> qv. */
static struct blk *blk_msix(struct vpci *p, uint32_t cv, uint32_t qv, const char **why) {
    irq_setup();
    msix_entry(p, 0, cv, 0);
    msix_entry(p, 1, qv, 0);
    msix_ctl(p, 1, 0);
    p->msix = 1;
    p->cfg_vec = 0;
    p->q_vec = 1;
    struct blk *b = probe_blk_open(p->idx, &shim_ops, p);
    *why = probe_blk_init(b);
    return b;
}
static struct blk *blk_polled(struct vpci *p, const char **why) {
    p->msix = 0;
    struct blk *b = probe_blk_open(p->idx, &shim_ops, p);
    *why = probe_blk_init(b);
    return b;
}

/* ---- The functions of bus 0 ------------------------------------------------------------- */

static struct vpci vdevs[32];
static int nvdevs;

static void find_virtio(int print) {
    nvdevs = 0;
    for (int i = 0; i < nfns && nvdevs < 32; i++) {
        if (cfg_r(fns[i].bdf, 0, 2) != VIRTIO_VENDOR) continue;
        vpci_open(&vdevs[nvdevs], fns[i].bdf, nvdevs, print);
        nvdevs++;
    }
}
static struct vpci *first_virtio(uint16_t device) {
    for (int i = 0; i < nvdevs; i++) if (vdevs[i].device == device && vdevs[i].ok) return &vdevs[i];
    return 0;
}

/* BAR0's size: decode off, all ones, read back, restored. */
static uint64_t bar0_size(uint32_t bdf, uint32_t *lo_out, uint32_t *hi_out) {
    uint32_t cmd = cfg_r(bdf, 4, 2), lo = cfg_r(bdf, 0x10, 4), hi = cfg_r(bdf, 0x14, 4);
    cfg_w(bdf, 4, 2, cmd & ~3u);
    cfg_w(bdf, 0x10, 4, 0xffffffffu);
    uint32_t slo = cfg_r(bdf, 0x10, 4), shi = 0;
    int is64 = (lo & 6) == 4;
    if (is64) { cfg_w(bdf, 0x14, 4, 0xffffffffu); shi = cfg_r(bdf, 0x14, 4); }
    cfg_w(bdf, 0x10, 4, lo);
    if (is64) cfg_w(bdf, 0x14, 4, hi);
    cfg_w(bdf, 4, 2, cmd);
    if (lo_out) *lo_out = slo;
    if (hi_out) *hi_out = shi;
    uint64_t mask = (uint64_t)shi << 32 | (slo & ~0xfu);
    if (!is64) mask |= 0xffffffff00000000ull;
    return mask ? ~mask + 1 : 0;
}

static void list_mode(uint64_t rsdp_hint) {
    puts_("PROBE: pci dsdt");
    kd("pnp0a08", (uint64_t)(int64_t)probe_dsdt_has_eisaid(rsdp_hint, 0x080ad041u));
    kd("pnp0a03", (uint64_t)(int64_t)probe_dsdt_has_eisaid(rsdp_hint, 0x030ad041u));
    kd("pnp0c02", (uint64_t)(int64_t)probe_dsdt_has_eisaid(rsdp_hint, 0x020cd041u));
    putc_('\n');
    puts_("PROBE: pci functions");
    kd("count", (uint64_t)nfns);
    putc_('\n');
    /* Both mechanisms: every dword, word and byte of 0..0xff; ECAM's 0x100..0xfff must be 0. */
    int mismatches = 0, ext_nonzero = 0;
    for (int i = 0; i < nfns; i++) {
        uint32_t bdf = fns[i].bdf;
        for (uint32_t reg = 0; reg < 0x100 && ecam; reg++) {
            for (int size = 1; size <= 4; size *= 2) {
                if (reg & (uint32_t)(size - 1)) continue;
                uint32_t a = cf8_read(bdf, reg, size), b = ecam_read(bdf, reg, size);
                if (a == b) continue;
                if (mismatches++ < 8) {
                    line("mismatch", bdf);
                    kv("reg", reg); kd("size", (uint64_t)size); kv("cf8", a); kv("ecam", b);
                    putc_('\n');
                }
            }
        }
        for (uint32_t reg = 0x100; reg < 0x1000 && ecam; reg += 4)
            if (ecam_read(bdf, reg, 4)) {
                if (ext_nonzero++ < 4) { line("ext-nonzero", bdf); kv("reg", reg); kv("value", ecam_read(bdf, reg, 4)); putc_('\n'); }
            }
    }
    /* Absent functions: all ones through both. */
    int absent_bad = 0;
    for (uint32_t d = 0; d < 32; d++) {
        uint32_t a = cf8_read(BDF(d, 0), 0, 4), b = ecam ? ecam_read(BDF(d, 0), 0, 4) : a;
        if (!present(a) && !present(b) && (a != 0xffffffffu || b != 0xffffffffu)) absent_bad++;
    }
    uint32_t bus1 = cf8_read(1u << 8, 0, 4);
    for (int i = 0; i < nfns; i++) {
        uint32_t bdf = fns[i].bdf;
        uint32_t id = cfg_r(bdf, 0, 4), cls = cfg_r(bdf, 8, 4), sub = cfg_r(bdf, 0x2c, 4);
        line("fn", bdf);
        putc_(' ');
        put_hexw(id & 0xffff, 4);
        putc_(':');
        put_hexw(id >> 16, 4);
        kv("class", cls >> 8);
        kv("rev", cls & 0xff);
        ks("via", fns[i].via == 3 ? "cf8+ecam" : fns[i].via == 1 ? "cf8" : "ecam");
        kv("hdr", cfg_r(bdf, 0x0e, 1));
        kv("subsys", sub);
        kv("cmd", cfg_r(bdf, 4, 2));
        kv("status", cfg_r(bdf, 6, 2));
        kv("capptr", cfg_r(bdf, 0x34, 1));
        kv("pin", cfg_r(bdf, 0x3d, 1));
        kv("line", cfg_r(bdf, 0x3c, 1));
        uint32_t lo = cfg_r(bdf, 0x10, 4);
        if (lo) {
            uint32_t slo, shi;
            uint64_t size = bar0_size(bdf, &slo, &shi);
            kv("bar0", bar0_addr(bdf));
            putc_('/');
            put_hx(size);
            kv("bar0_flags", lo & 0xf);
            kv("sized_lo", slo);
            kv("sized_hi", shi);
        } else {
            kv("bar0", 0);
        }
        int nbars = 0;
        for (uint32_t r = 0x18; r <= 0x24; r += 4) nbars += cfg_r(bdf, r, 4) != 0;
        kd("other_bars", (uint64_t)nbars);
        if ((id & 0xffff) == VIRTIO_VENDOR) {
            struct vpci v;
            vpci_open(&v, bdf, 0, 0);
            kd("msix", v.msix_size);
        }
        putc_('\n');
    }
    find_virtio(1);
    for (int i = 0; i < nvdevs; i++) {
        struct vpci *p = &vdevs[i];
        line("virtio", p->bdf);
        kd("idx", (uint64_t)p->idx);
        kv("device", p->device);
        kd("ok", (uint64_t)p->ok);
        if (p->ok) {
            kv("features_lo", (w32(cc(p, CC_DFSELECT), 0), r32(cc(p, CC_DF))));
            kv("features_hi", (w32(cc(p, CC_DFSELECT), 1), r32(cc(p, CC_DF))));
            kd("num_queues", r16(cc(p, CC_NUMQ)));
            w16(cc(p, CC_Q_SELECT), 0);
            kd("queue0_size", r16(cc(p, CC_Q_SIZE)));
            kv("queue0_msix", r16(cc(p, CC_Q_MSIX)));
            kv("config_msix", r16(cc(p, CC_MSIX_CONFIG)));
            kd("queue0_notify_off", r16(cc(p, CC_Q_NOFF)));
            kv("status", r8(cc(p, CC_STATUS)));
            kv("isr", r8(isr_addr(p)));
            if (p->cap_pcicfg) {
                /* The same register through the PCI configuration access capability. */
                uint32_t c = p->cap_pcicfg;
                cfg_w(p->bdf, c + 4, 1, 0);
                cfg_w(p->bdf, c + 8, 4, p->common + CC_NUMQ);
                cfg_w(p->bdf, c + 12, 4, 2);
                kv("pcicfg_numq", cfg_r(p->bdf, c + 16, 2));
                cfg_w(p->bdf, c + 8, 4, p->common + CC_Q_SELECT);
                cfg_w(p->bdf, c + 16, 2, 0);
                cfg_w(p->bdf, c + 8, 4, p->common + CC_Q_SIZE);
                kd("pcicfg_queue0_size", cfg_r(p->bdf, c + 16, 2));
            }
        }
        putc_('\n');
    }
    puts_("PROBE: pci absent");
    kd("bad", (uint64_t)absent_bad);
    kv("bus1", bus1);
    kd("ext_nonzero", (uint64_t)ext_nonzero);
    putc_('\n');
    if (!ecam) puts_("PROBE: pci mechanisms ecam-missing\n");
    else if (mismatches) { puts_("PROBE: pci mechanisms differ"); kd("count", (uint64_t)mismatches); putc_('\n'); }
    else puts_("PROBE: pci mechanisms agree\n");
}

/* ---- probe.pci=blk ---------------------------------------------------------------------- */

static void blk_mode(void) {
    int n = 0;
    for (int i = 0; i < nvdevs; i++) {
        struct vpci *p = &vdevs[i];
        if (p->device != 0x1042) continue;
        n++;
        uint32_t cv = 0x40 + 2 * (uint32_t)(p->idx & 15), qv = cv + 1;
        if (!p->ok || !p->cap_msix) { line("blk", p->bdf); ks("failed", "no-capabilities"); putc_('\n'); continue; }
        const char *why;
        struct blk *b = blk_msix(p, cv, qv, &why);
        line("blk", p->bdf);
        kd("dev", (uint64_t)p->idx);
        if (why) { ks("failed", why); putc_('\n'); continue; }
        kv("msix_ctl", cfg_r(p->bdf, p->cap_msix + 2u, 2));
        kv("config_vector", p->cfg_vec_rb);
        kv("queue_vector", p->q_vec_rb);
        kv("cv", cv);
        kv("qv", qv);
        putc_('\n');
        uint64_t fnv;
        int st = probe_blk_read(b, 0, 4096, &fnv);
        int pending = irr_wait(qv, 1000), cpending = irr(cv);
        uint32_t taken = irq_take(qv, 1000);
        line("blk", p->bdf);
        ks("check", "msix-read");
        kst("read", st);
        kv("fnv", fnv);
        kd("irr", (uint64_t)pending);
        kd("config_irr", (uint64_t)cpending);
        kd("taken", taken);
        kd("irr_after", (uint64_t)irr(qv));
        kd("isr_lapic_after", (uint64_t)lapic_isr(qv));
        putc_('\n');
        probe_blk_test(b); /* PROBE: blk dev=N ... lines, as for virtio-mmio; ends with a reset */
        pending = irr_wait(qv, 1000);
        cpending = irr(cv);
        taken = irq_take(qv, 1000);
        line("blk", p->bdf);
        ks("check", "msix-after-test");
        kd("irr", (uint64_t)pending);
        kd("config_irr", (uint64_t)cpending);
        kd("taken", taken);
        kd("irr_after", (uint64_t)irr(qv));
        putc_('\n');
        msix_ctl(p, 0, 0);
        irq_drain(10);
    }
    puts_("PROBE: pci blk");
    kd("count", (uint64_t)n);
    putc_('\n');
}

/* ---- probe.pci=rng ---------------------------------------------------------------------- */

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };
static uint8_t rq_mem[3][4096] __attribute__((aligned(4096)));
static uint8_t rng_buf[2][64] __attribute__((aligned(64)));
#define RQ_DESC ((volatile struct vdesc *)(uintptr_t)rq_mem[0])
#define RQ_AVAIL ((volatile uint16_t *)(uintptr_t)rq_mem[1])
#define RQ_USED ((volatile uint16_t *)(uintptr_t)rq_mem[2])
#define RQ_USED_RING ((volatile uint32_t *)(uintptr_t)(rq_mem[2] + 4))

/* Reset .. DRIVER_OK with VERSION_1 alone and queue 0 (at most 16 entries) in rq_mem. */
static const char *vp_setup(struct vpci *p, uint16_t *qsize, uint64_t *offered) {
    vp_reset(p);
    if (r8(cc(p, CC_STATUS))) return "reset-failed";
    w8(cc(p, CC_STATUS), 1);
    w8(cc(p, CC_STATUS), 3);
    w32(cc(p, CC_DFSELECT), 0);
    uint64_t lo = r32(cc(p, CC_DF));
    w32(cc(p, CC_DFSELECT), 1);
    *offered = (uint64_t)r32(cc(p, CC_DF)) << 32 | lo;
    if (!(*offered >> 32 & 1)) return "no-version-1";
    w32(cc(p, CC_GFSELECT), 0);
    w32(cc(p, CC_GF), 0);
    w32(cc(p, CC_GFSELECT), 1);
    w32(cc(p, CC_GF), 1);
    w8(cc(p, CC_STATUS), 0xb);
    if (!(r8(cc(p, CC_STATUS)) & 8)) return "features-not-ok";
    w16(cc(p, CC_Q_SELECT), 0);
    uint16_t max = r16(cc(p, CC_Q_SIZE));
    if (!max) return "no-queue-0";
    *qsize = max < 16 ? max : 16;
    for (int i = 0; i < 3; i++) for (int j = 0; j < 4096; j++) ((volatile uint8_t *)rq_mem[i])[j] = 0;
    w16(cc(p, CC_Q_SIZE), *qsize);
    w16(cc(p, CC_Q_MSIX), NO_VECTOR);
    uint64_t d = (uint64_t)(uintptr_t)rq_mem[0], a = (uint64_t)(uintptr_t)rq_mem[1], u = (uint64_t)(uintptr_t)rq_mem[2];
    w32(cc(p, CC_Q_DESC), (uint32_t)d); w32(cc(p, CC_Q_DESC + 4), (uint32_t)(d >> 32));
    w32(cc(p, CC_Q_DRIVER), (uint32_t)a); w32(cc(p, CC_Q_DRIVER + 4), (uint32_t)(a >> 32));
    w32(cc(p, CC_Q_DEVICE), (uint32_t)u); w32(cc(p, CC_Q_DEVICE + 4), (uint32_t)(u >> 32));
    p->qnoff[0] = r16(cc(p, CC_Q_NOFF));
    w16(cc(p, CC_Q_ENABLE), 1);
    w8(cc(p, CC_STATUS), 0xf);
    if (r8(cc(p, CC_STATUS)) != 0xf) return "driver-ok-refused";
    return 0;
}

static void rng_mode(void) {
    struct vpci *p = first_virtio(0x1044);
    if (!p) { puts_("PROBE: pci rng failed no-device\n"); return; }
    uint16_t qsize;
    uint64_t offered;
    const char *why = vp_setup(p, &qsize, &offered);
    line("rng", p->bdf);
    kd("dev", (uint64_t)p->idx);
    if (why) { ks("failed", why); kv("status", r8(cc(p, CC_STATUS))); putc_('\n'); return; }
    kv("features", offered);
    kd("queue_size", qsize);
    uint32_t lens[2] = {0, 0};
    int timeouts = 0;
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 64; j++) rng_buf[i][j] = 0;
        RQ_DESC[i].addr = (uint64_t)(uintptr_t)rng_buf[i];
        RQ_DESC[i].len = 64;
        RQ_DESC[i].flags = 2; /* device-writable */
        RQ_DESC[i].next = 0;
        barrier();
        RQ_AVAIL[2 + i] = (uint16_t)i;
        barrier();
        RQ_AVAIL[1] = (uint16_t)(i + 1);
        vp_notify(p, 0);
        uint64_t end = probe_deadline_ms(5000);
        while (RQ_USED[1] != i + 1 && rdtsc() < end) pause();
        barrier();
        if (RQ_USED[1] != i + 1) { timeouts++; break; }
        lens[i] = RQ_USED_RING[2 * i + 1];
    }
    int nonzero = 1, differ = 0;
    for (int i = 0; i < 2; i++) {
        int any = 0;
        for (int j = 0; j < 64; j++) any |= rng_buf[i][j];
        nonzero &= any != 0;
    }
    for (int j = 0; j < 64; j++) differ |= rng_buf[0][j] != rng_buf[1][j];
    kd("len1", lens[0]);
    kd("len2", lens[1]);
    kd("nonzero", (uint64_t)nonzero);
    kd("differ", (uint64_t)differ);
    kd("timeouts", (uint64_t)timeouts);
    putc_('\n');
    vp_reset(p);
}

/* ---- probe.pci=msix ---------------------------------------------------------------------- */

static void msix_line(const struct vpci *p, const char *check) { line("msix", p->bdf); ks("check", check); }

static void msix_mode(void) {
    struct vpci *p = first_virtio(0x1042);
    if (!p || !p->cap_msix) { puts_("PROBE: pci msix failed no-device\n"); return; }
    const uint32_t cv = 0x60, qv = 0x61, qv2 = 0x62;
    const char *why;
    struct blk *b = blk_msix(p, cv, qv, &why);
    if (why) { msix_line(p, "init"); ks("failed", why); putc_('\n'); return; }
    int st, pend, pb;
    uint32_t taken;

    st = probe_blk_read(b, 0, 512, 0);
    pend = irr_wait(qv, 1000);
    taken = irq_take(qv, 1000);
    msix_line(p, "baseline"); kst("read", st); kd("irr", (uint64_t)pend); kd("taken", taken); putc_('\n');

    /* The entry masked: nothing arrives, the pending bit is set; unmasked: sent, cleared. */
    msix_mask(p, 1, 1);
    st = probe_blk_read(b, 0, 512, 0);
    pb = pba_wait(p, 1, 1, 1000);
    pend = irr_wait(qv, 200);
    msix_line(p, "entry-masked"); kst("read", st); kd("irr", (uint64_t)pend); kd("pba", (uint64_t)pb); putc_('\n');
    msix_mask(p, 1, 0);
    pend = irr_wait(qv, 1000);
    pb = pba_wait(p, 1, 0, 1000);
    taken = irq_take(qv, 1000);
    msix_line(p, "entry-unmasked"); kd("irr", (uint64_t)pend); kd("pba", (uint64_t)pb); kd("taken", taken); putc_('\n');

    /* The function mask, the same way. */
    msix_ctl(p, 1, 1);
    st = probe_blk_read(b, 0, 512, 0);
    pb = pba_wait(p, 1, 1, 1000);
    pend = irr_wait(qv, 200);
    msix_line(p, "function-masked"); kst("read", st); kd("irr", (uint64_t)pend); kd("pba", (uint64_t)pb); putc_('\n');
    msix_ctl(p, 1, 0);
    pend = irr_wait(qv, 1000);
    pb = pba_wait(p, 1, 0, 1000);
    taken = irq_take(qv, 1000);
    msix_line(p, "function-unmasked"); kd("irr", (uint64_t)pend); kd("pba", (uint64_t)pb); kd("taken", taken); putc_('\n');

    /* Pending while masked, the entry rewritten to another vector: the message goes out with
     * what the entry holds when it is unmasked. */
    msix_mask(p, 1, 1);
    st = probe_blk_read(b, 0, 512, 0);
    pb = pba_wait(p, 1, 1, 1000);
    w32(msix_entry_addr(p, 1) + 8, qv2);
    msix_mask(p, 1, 0);
    int pend2 = irr_wait(qv2, 1000);
    pend = irr(qv);
    taken = irq_take(qv2, 1000);
    msix_line(p, "retarget"); kst("read", st); kd("pba", (uint64_t)pb); kd("irr_old", (uint64_t)pend); kd("irr_new", (uint64_t)pend2);
    kd("taken", taken); putc_('\n');
    w32(msix_entry_addr(p, 1) + 8, qv);

    /* Vectors the table does not have read back as NO_VECTOR: written while the device is
     * being set up (ACKNOWLEDGE | DRIVER, queue 0 selected), as a driver does. */
    probe_blk_reset(b);
    w8(cc(p, CC_STATUS), 1);
    w8(cc(p, CC_STATUS), 3);
    w16(cc(p, CC_Q_SELECT), 0);
    msix_line(p, "vector-range");
    kd("table_size", p->msix_size);
    uint16_t tries[] = {(uint16_t)p->msix_size, 0x7ff, 0xfffe, 0x8000};
    for (int i = 0; i < 4; i++) {
        w16(cc(p, CC_Q_MSIX), tries[i]);
        puts_(" queue_");
        put_hx(tries[i]);
        putc_('=');
        put_hx(r16(cc(p, CC_Q_MSIX)));
    }
    w16(cc(p, CC_Q_MSIX), 1);
    kv("queue_in_range", r16(cc(p, CC_Q_MSIX)));
    w16(cc(p, CC_MSIX_CONFIG), (uint16_t)p->msix_size);
    kv("config_beyond", r16(cc(p, CC_MSIX_CONFIG)));
    w16(cc(p, CC_MSIX_CONFIG), 0);
    kv("config_back", r16(cc(p, CC_MSIX_CONFIG)));
    putc_('\n');

    /* The device live again with queue 0 on vector 1: a write beyond the table now (the VMM
     * may keep the vector while DRIVER_OK is set; reported, not a rule of the spec). */
    why = probe_blk_init(b);
    if (why) { msix_line(p, "reinit"); ks("failed", why); putc_('\n'); return; }
    w16(cc(p, CC_Q_SELECT), 0);
    w16(cc(p, CC_Q_MSIX), (uint16_t)p->msix_size);
    msix_line(p, "vector-live"); kv("queue_beyond", r16(cc(p, CC_Q_MSIX)));
    w16(cc(p, CC_Q_MSIX), 1);
    kv("queue_back", r16(cc(p, CC_Q_MSIX))); putc_('\n');

    /* NO_VECTOR for queue 0 (set up so): no message, nothing pending. */
    p->q_vec = NO_VECTOR;
    why = probe_blk_init(b);
    p->q_vec = 1;
    st = why ? -2 : probe_blk_read(b, 0, 512, 0);
    pend = irr_wait(qv, 200);
    msix_line(p, "no-vector"); kv("queue_vector", p->q_vec_rb); kst("read", st); kd("irr", (uint64_t)pend);
    kd("pba", (uint64_t)pba(p, 1)); putc_('\n');
    why = probe_blk_init(b);
    if (why) { msix_line(p, "reinit"); ks("failed", why); putc_('\n'); return; }

    /* MSI-X disabled under a live device: no message; the ISR byte says queue (INTx, whose
     * IOAPIC pin stays masked here). */
    msix_ctl(p, 0, 0);
    (void)r8(isr_addr(p));
    st = probe_blk_read(b, 0, 512, 0);
    uint64_t end = probe_deadline_ms(1000);
    uint8_t isr = 0;
    while (!(isr = r8(isr_addr(p))) && rdtsc() < end) pause();
    pend = irr_wait(qv, 200);
    msix_line(p, "disabled"); kst("read", st); kd("irr", (uint64_t)pend); kv("isr", isr); putc_('\n');

    probe_blk_reset(b);
    irq_drain(10);
    puts_("PROBE: pci msix done\n");
}

/* ---- probe.pci=intx ---------------------------------------------------------------------- */

static void intx_line(const struct vpci *p, const char *check) { line("intx", p->bdf); ks("check", check); }

static void intx_mode(void) {
    struct vpci *p = first_virtio(0x1042);
    if (!p) { puts_("PROBE: pci intx failed no-device\n"); return; }
    irq_setup();
    const uint32_t v = 0x70;
    uint32_t gsi = cfg_r(p->bdf, 0x3c, 1), pin = cfg_r(p->bdf, 0x3d, 1);
    uint32_t ver = ioapic_r(1), pins = ((ver >> 16) & 0xff) + 1;
    intx_line(p, "setup"); kd("gsi", gsi); kd("pin", pin); kd("ioapic_pins", pins);
    if (gsi >= pins || !pin) { ks("failed", "no-line"); putc_('\n'); return; }
    if (p->cap_msix) msix_ctl(p, 0, 0);
    cfg_w(p->bdf, 4, 2, cfg_r(p->bdf, 4, 2) & ~0x400u); /* INTx not disabled */
    /* Fixed, physical, level-triggered, active high, to this CPU, unmasked. */
    ioapic_w(0x11 + 2 * gsi, apic_id() << 24);
    ioapic_w(0x10 + 2 * gsi, v | 1u << 15);
    kv("redir", ioapic_r(0x10 + 2 * gsi));
    putc_('\n');
    const char *why;
    struct blk *b = blk_polled(p, &why);
    if (why) { intx_line(p, "init"); ks("failed", why); putc_('\n'); return; }

    int st = probe_blk_read(b, 0, 512, 0);
    int pend = irr_wait(v, 1000);
    intx_line(p, "delivered"); kst("read", st); kd("irr", (uint64_t)pend); kd("tmr", (uint64_t)tmr(v));
    kd("pci_int_status", (uint64_t)(cfg_r(p->bdf, 6, 2) >> 3 & 1)); putc_('\n');

    /* Taken without reading ISR (the handler masks the pin): the line stays up, so unmasking
     * the pin delivers it again. */
    irq_mask_pin = gsi;
    uint32_t taken = irq_take(v, 1000);
    irq_mask_pin = 0xffffffffu;
    uint32_t redir = ioapic_r(0x10 + 2 * gsi);
    ioapic_w(0x10 + 2 * gsi, v | 1u << 15);
    int again = irr_wait(v, 1000);
    intx_line(p, "level"); kd("taken", taken); kd("masked", redir >> 16 & 1); kd("redelivered", (uint64_t)again); putc_('\n');

    /* The ISR byte: read once it says queue and deasserts; then EOI brings nothing back. */
    uint8_t isr1 = r8(isr_addr(p)), isr2 = r8(isr_addr(p));
    uint32_t status_after = cfg_r(p->bdf, 6, 2) >> 3 & 1;
    taken = irq_take(v, 1000);
    int back = irr_wait(v, 200);
    intx_line(p, "isr"); kv("isr", isr1); kv("isr_again", isr2); kd("pci_int_status", status_after); kd("taken", taken);
    kd("irr_after_eoi", (uint64_t)back); kd("remote_irr", ioapic_r(0x10 + 2 * gsi) >> 14 & 1); putc_('\n');

    /* A second request raises it again. */
    st = probe_blk_read(b, 0, 512, 0);
    pend = irr_wait(v, 1000);
    isr1 = r8(isr_addr(p));
    taken = irq_take(v, 1000);
    intx_line(p, "second"); kst("read", st); kd("irr", (uint64_t)pend); kv("isr", isr1); kd("taken", taken); putc_('\n');

    /* INTx disabled in the command register: no interrupt. */
    cfg_w(p->bdf, 4, 2, cfg_r(p->bdf, 4, 2) | 0x400u);
    st = probe_blk_read(b, 0, 512, 0);
    pend = irr_wait(v, 200);
    isr1 = r8(isr_addr(p));
    intx_line(p, "disabled"); kst("read", st); kd("irr", (uint64_t)pend); kv("isr", isr1); putc_('\n');
    cfg_w(p->bdf, 4, 2, cfg_r(p->bdf, 4, 2) & ~0x400u);

    ioapic_w(0x10 + 2 * gsi, 1u << 16);
    probe_blk_reset(b);
    irq_drain(10);
    puts_("PROBE: pci intx done\n");
}

/* ---- probe.pci=hostile ------------------------------------------------------------------- */

static uint32_t saved[MAXF][64];

static void save_all(void) {
    for (int i = 0; i < nfns; i++)
        for (uint32_t r = 0; r < 64; r++) saved[i][r] = cfg_r(fns[i].bdf, 4 * r, 4);
}

/* Writes back what the sweep changed: everything but the identity and the configuration
 * access window's data (a write there is a BAR access), the command register last. */
static int restore_all(void) {
    int bad = 0;
    for (int i = 0; i < nfns; i++) {
        uint32_t bdf = fns[i].bdf, pcicfg = 0;
        for (int k = 0; k < nvdevs; k++) if (vdevs[k].bdf == bdf && vdevs[k].cap_pcicfg) pcicfg = vdevs[k].cap_pcicfg + 16u;
        for (uint32_t r = 2; r < 64; r++) if (4 * r != pcicfg) cfg_w(bdf, 4 * r, 4, saved[i][r]);
        cfg_w(bdf, 4, 2, saved[i][1] & 0xffff);
        for (uint32_t r = 0; r < 64; r++) {
            uint32_t now = cfg_r(bdf, 4 * r, 4), then = saved[i][r];
            if (r == 1) { now &= 0x0000ffff; then &= 0x0000ffff; } /* status bits may move */
            if (4 * r == pcicfg || now == then) continue;
            if (bad++ < 4) { line("hostile restore-mismatch", bdf); kv("reg", 4 * r); kv("was", then); kv("now", now); putc_('\n'); }
        }
    }
    return bad;
}

/* Every offset 0..0xfff at sizes 1, 2 and 4: read, write all ones, write zero. */
static void sweep(uint32_t bdf, int use_ecam) {
    for (uint32_t off = 0; off < 0x1000; off++) {
        for (int size = 1; size <= 4; size *= 2) {
            if (use_ecam) {
                (void)ecam_read(bdf, off, size);
                ecam_write(bdf, off, size, 0xffffffffu);
                ecam_write(bdf, off, size, 0);
            } else {
                (void)cf8_read(bdf, off, size);
                cf8_write(bdf, off, size, 0xffffffffu);
                cf8_write(bdf, off, size, 0);
            }
        }
    }
}

static void reset_all_virtio(void) {
    for (int i = 0; i < nvdevs; i++) if (vdevs[i].ok) { vdevs[i].bar0 = bar0_addr(vdevs[i].bdf); vp_reset(&vdevs[i]); }
}

static void hostile_mode(void) {
    struct vpci *p = first_virtio(0x1042);
    if (!p || !p->cap_msix) { puts_("PROBE: pci hostile failed no-device\n"); return; }
    irq_setup();
    const char *why;
    uint64_t fnv0 = 0, fnv;
    struct blk *b = blk_polled(p, &why);
    int st0 = why ? -2 : probe_blk_read(b, 0, 4096, &fnv0);
    probe_blk_reset(b);
    line("hostile baseline", p->bdf); kst("read", st0); kv("fnv", fnv0); putc_('\n');
    save_all();

    /* 1. Sweeps through both mechanisms, on every function, an absent function of a present
     *    device and an absent device. */
    uint32_t absent_dev = 0;
    for (uint32_t d = 31; d > 0 && !absent_dev; d--) if (!present(cf8_read(BDF(d, 0), 0, 4))) absent_dev = BDF(d, 0);
    for (int i = 0; i < nfns; i++) {
        sweep(fns[i].bdf, 0);
        if (ecam) sweep(fns[i].bdf, 1);
    }
    sweep(p->bdf | 7, 0);
    if (ecam) sweep(p->bdf | 7, 1);
    if (absent_dev) { sweep(absent_dev, 0); if (ecam) sweep(absent_dev, 1); }
    int bad = restore_all();
    reset_all_virtio();
    puts_("PROBE: pci hostile sweep"); kd("functions", (uint64_t)nfns); kd("restore_mismatches", (uint64_t)bad);
    kv("absent_fn_id", cfg_r(p->bdf | 7, 0, 4)); kv("absent_dev_id", absent_dev ? cfg_r(absent_dev, 0, 4) : 0); putc_('\n');

    /* 2. The legacy mechanism's corners: enable bit clear, bus 1, partial CF8 writes. */
    outl(0xcf8, p->bdf << 8);
    uint32_t disabled = inl(0xcfc);
    uint32_t bus1 = cf8_read(p->bdf | 1u << 8, 0, 4);
    outl(0xcf8, cf8_addr(p->bdf, 0));
    outw(0xcf8, 0x1234);
    outb(0xcfb, 0x80);
    uint32_t partial = inl(0xcfc);
    uint32_t ecam_bus1 = ecam ? r32(ecam + (1u << 20)) : 0;
    puts_("PROBE: pci hostile cf8"); kv("disabled_read", disabled); kv("bus1", bus1); kv("after_partial", partial);
    kv("ecam_bus1", ecam_bus1); kv("id_now", cf8_read(p->bdf, 0, 4)); putc_('\n');

    /* 3. BAR sizing, with decode on and off. */
    uint32_t slo, shi;
    uint64_t size = bar0_size(p->bdf, &slo, &shi);
    uint32_t lo = cfg_r(p->bdf, 0x10, 4), hi = cfg_r(p->bdf, 0x14, 4);
    cfg_w(p->bdf, 0x10, 4, 0xffffffffu); /* decode still on */
    cfg_w(p->bdf, 0x14, 4, 0xffffffffu);
    uint32_t live_lo = cfg_r(p->bdf, 0x10, 4), live_hi = cfg_r(p->bdf, 0x14, 4);
    cfg_w(p->bdf, 0x10, 4, lo);
    cfg_w(p->bdf, 0x14, 4, hi);
    uint32_t other[4];
    for (int i = 0; i < 4; i++) {
        uint32_t r = 0x18 + 4 * (uint32_t)i, was = cfg_r(p->bdf, r, 4);
        cfg_w(p->bdf, r, 4, 0xffffffffu);
        other[i] = cfg_r(p->bdf, r, 4);
        cfg_w(p->bdf, r, 4, was);
    }
    uint32_t rom_was = cfg_r(p->bdf, 0x30, 4);
    cfg_w(p->bdf, 0x30, 4, 0xffffffffu);
    uint32_t rom = cfg_r(p->bdf, 0x30, 4);
    cfg_w(p->bdf, 0x30, 4, rom_was);
    line("hostile bar-sizing", p->bdf); kv("size", size); kv("sized_lo", slo); kv("sized_hi", shi); kv("live_lo", live_lo);
    kv("live_hi", live_hi); kv("bar2", other[0]); kv("bar3", other[1]); kv("bar4", other[2]); kv("bar5", other[3]); kv("rom", rom);
    kv("bar0_now", bar0_addr(p->bdf)); putc_('\n');

    /* 4. BAR0 moved (decode on) onto another device, RAM at 0, the ECAM, the exit device,
     *    the LAPIC, the top of the 64-bit space, and a free place where it must work. */
    uint64_t home = p->bar0;
    struct vpci *q = 0;
    for (int i = 0; i < nvdevs; i++) if (&vdevs[i] != p && vdevs[i].ok) { q = &vdevs[i]; break; }
    uint64_t targets[8];
    const char *names[8];
    int nt = 0;
    if (q) { targets[nt] = q->bar0; names[nt++] = "other-device"; }
    targets[nt] = 0; names[nt++] = "ram-0";
    if (ecam) { targets[nt] = ecam; names[nt++] = "ecam"; }
    targets[nt] = 0xd0000000ull; names[nt++] = "exit-device";
    targets[nt] = 0xfee00000ull; names[nt++] = "lapic";
    targets[nt] = 0xfffffffffffff000ull; names[nt++] = "top";
    targets[nt] = 0xc0100000ull; names[nt++] = "free";
    for (int i = 0; i < nt; i++) {
        bar0_set(p->bdf, targets[i]);
        uint64_t now = bar0_addr(p->bdf);
        line("hostile bar-move", p->bdf);
        ks("to", names[i]);
        kv("bar0", now);
        if (now <= 0x100000000ull - 0x8000 && now != 0xfee00000ull) /* mapped, not the LAPIC */ kv("numq_there", r16(now + p->common + CC_NUMQ));
        if (!(q && targets[i] == q->bar0)) kv("numq_home", r16(home + p->common + CC_NUMQ));
        if (targets[i] == 0xc0100000ull) {
            p->bar0 = now;
            b = blk_polled(p, &why);
            int st = why ? -2 : probe_blk_read(b, 0, 4096, &fnv);
            kst("read", st);
            kd("fnv_same", (uint64_t)(st == 0 && fnv == fnv0));
            probe_blk_reset(b);
            p->bar0 = home;
        }
        putc_('\n');
    }
    bar0_set(p->bdf, home);
    if (q) {
        uint32_t id = r16(q->bar0 + q->common + CC_NUMQ);
        line("hostile other-after-overlap", q->bdf); kv("numq", id); kv("bar0", bar0_addr(q->bdf)); putc_('\n');
    }

    /* 5. The MSI-X table: writes past its entries, onto the PBA, 8-, 2- and 1-byte and
     *    unaligned writes; a message to an address that is no LAPIC. */
    uint64_t tab = p->bar0 + (p->msix_table & ~7u), pbaa = p->bar0 + (p->msix_pba & ~7u);
    for (uint64_t a = tab + 16 * p->msix_size; a < p->bar0 + 0x8000; a += 4) {
        if (a >= pbaa && a < pbaa + 8) continue;
        w32(a, 0xffffffffu);
    }
    w64(pbaa, ~0ull);
    w64(tab, 0xfee00000ull | (uint64_t)0x41 << 32);
    w16(tab + 16 + 8, 0x41);
    w8(tab + 16 + 12, 0);
    w32(tab + 2, 0xffffffffu);
    uint32_t pba_after = r32(pbaa), beyond = r32(tab + 16 * p->msix_size);
    msix_entry(p, 0, 0x42, 0);
    msix_entry(p, 1, 0x43, 0);
    int table_ok = r32(tab + 8) == 0x42 && r32(tab + 16 + 8) == 0x43 && r32(tab + 12) == 0 && r32(tab + 16 + 12) == 0
                   && r32(tab) == (0xfee00000u | apic_id() << 12) && r32(tab + 16) == (0xfee00000u | apic_id() << 12);
    /* A message to RAM (address 0): a hostile entry the VMM must refuse or drop. */
    w32(tab + 16 + 12, 1);
    w32(tab + 16, 0);
    w32(tab + 16 + 12, 0);
    p->msix = 1;
    p->cfg_vec = 0;
    p->q_vec = 1;
    msix_ctl(p, 1, 0);
    b = probe_blk_open(p->idx, &shim_ops, p);
    why = probe_blk_init(b);
    int st_bad = why ? -2 : probe_blk_read(b, 0, 512, 0);
    probe_blk_reset(b);
    msix_ctl(p, 0, 0);
    p->msix = 0;
    line("hostile msix-table", p->bdf); kv("pba_after_write", pba_after); kv("beyond_table", beyond); kd("table_ok", (uint64_t)table_ok);
    kst("read_with_bad_address", st_bad); putc_('\n');

    /* 6. BAR0 read and written at every dword (beyond the common configuration, whose writes
     *    would only reset), the device reset. */
    for (uint32_t off = 0; off < 0x8000; off += 4) (void)r32(p->bar0 + off);
    for (uint32_t off = p->common + 0x40; off < 0x8000; off += 4) w32(p->bar0 + off, off >= 0x3000 && off < 0x4000 ? 0 : 0xffffffffu);
    vp_reset(p);
    line("hostile bar-sweep", p->bdf); kv("status", r8(cc(p, CC_STATUS))); putc_('\n');

    /* 7. Memory decode off between making a request available and notifying. */
    b = blk_polled(p, &why);
    if (!why) {
        probe_blk_post_read(b, 0, 4096);
        uint32_t cmd = cfg_r(p->bdf, 4, 2);
        cfg_w(p->bdf, 4, 2, cmd & ~2u);
        probe_blk_notify(b);
        uint32_t numq_off = r16(cc(p, CC_NUMQ));
        uint64_t end = probe_deadline_ms(300);
        while (!probe_blk_used(b) && rdtsc() < end) pause();
        int used_off = probe_blk_used(b);
        cfg_w(p->bdf, 4, 2, cmd);
        probe_blk_notify(b);
        int st = probe_blk_reap(b, 5000);
        line("hostile decode-off", p->bdf); kd("used_while_off", (uint64_t)used_off); kv("numq_while_off", numq_off); kst("read_after", st);
        kv("numq_after", r16(cc(p, CC_NUMQ))); putc_('\n');
        probe_blk_reset(b);
    } else {
        line("hostile decode-off", p->bdf); ks("failed", why); putc_('\n');
    }

    /* 8. The configuration access capability with bad windows: a BAR that does not exist,
     *    offsets past the BAR and straddling its end, lengths 0, 3 and huge, a notify. */
    if (p->cap_pcicfg) {
        uint32_t c = p->cap_pcicfg;
        static const struct { uint8_t bar; uint32_t off, len; } wins[] = {
            {5, 0, 4}, {0, 0xfffffffcu, 4}, {0, 0x7ffe, 4}, {0, 0x12, 3}, {0, 0x12, 0}, {0, 0x12, 0xffffffffu}, {0xff, 0, 4}, {0, 0x3000, 2},
        };
        uint32_t x = 0;
        for (unsigned i = 0; i < sizeof(wins) / sizeof(wins[0]); i++) {
            cfg_w(p->bdf, c + 4, 1, wins[i].bar);
            cfg_w(p->bdf, c + 8, 4, wins[i].off);
            cfg_w(p->bdf, c + 12, 4, wins[i].len);
            x ^= cfg_r(p->bdf, c + 16, 4);
            cfg_w(p->bdf, c + 16, 4, 0);
        }
        cfg_w(p->bdf, c + 4, 1, 0);
        cfg_w(p->bdf, c + 8, 4, 0);
        cfg_w(p->bdf, c + 12, 4, 0);
        line("hostile pcicfg", p->bdf); kv("xor", x); putc_('\n');
    }

    /* Back as it was, every device reset: the disk must work, with MSI-X. */
    bad = restore_all();
    reset_all_virtio();
    p->bar0 = bar0_addr(p->bdf);
    b = blk_msix(p, 0x44, 0x45, &why);
    int st = why ? -2 : probe_blk_read(b, 0, 4096, &fnv);
    int pend = why ? 0 : irr_wait(0x45, 1000);
    uint32_t taken = irq_take(0x45, 1000);
    probe_blk_reset(b);
    msix_ctl(p, 0, 0);
    line("hostile device-works", p->bdf); kd("restore_mismatches", (uint64_t)bad); kv("bar0", p->bar0);
    if (why) ks("failed", why);
    kst("read", st); kd("fnv_same", (uint64_t)(st == 0 && fnv == fnv0)); kd("irr", (uint64_t)pend); kd("taken", taken); putc_('\n');
    irq_drain(10);
    puts_("PROBE: pci hostile done\n");
}

/* ---- probe.bench=blk* probe.transport=pci ------------------------------------------------ */

/* A memory range from the DSDT: the first address space descriptor with `tag` (0x87 DWord,
 * 0x8a QWord) and resource type memory, in a `Name (_CRS, ResourceTemplate ...)` after the
 * first occurrence of the name `after`. Returns 0 and sets [*lo, *hi), or -1. Ours, and QEMU's
 * GPEX, describe the host bridge's window so in PCI0's _CRS; QEMU's GPEX (microvm, which has
 * no MCFG) its ECAM as a QWord in the _CRS of PCI0.RES0 (a PNP0C02). */
static int dsdt_mem(uint64_t rsdp_hint, const char *after, uint8_t tag, uint64_t *lo, uint64_t *hi) {
    const uint8_t *d = probe_acpi_dsdt(rsdp_hint);
    if (!d) return -1;
    uint32_t len = *(const uint32_t *)(d + 4), i = 0;
    for (uint32_t k = 36; k + 4 <= len && !i; k++)
        if (d[k] == (uint8_t)after[0] && d[k + 1] == (uint8_t)after[1] && d[k + 2] == (uint8_t)after[2] && d[k + 3] == (uint8_t)after[3])
            i = k;
    if (!i) return -1;
    for (; i + 6 <= len; i++) {
        if (!(d[i] == 0x08 && d[i + 1] == '_' && d[i + 2] == 'C' && d[i + 3] == 'R' && d[i + 4] == 'S' && d[i + 5] == 0x11))
            continue;
        uint32_t j = i + 6, follow = d[j] >> 6, pkg = follow ? d[j] & 0xf : d[j] & 0x3f;
        for (uint32_t b = 1; b <= follow; b++) pkg |= (uint32_t)d[j + b] << (4 + 8 * (b - 1));
        uint32_t end = j + pkg; /* PkgLength counts itself */
        j += 1 + follow;
        /* BufferSize: a ByteConst, WordConst, DWordConst, Zero or One */
        if (d[j] == 0x0a) j += 2;
        else if (d[j] == 0x0b) j += 3;
        else if (d[j] == 0x0c) j += 5;
        else j += 1;
        while (j + 3 <= end && j + 3 <= len) {
            uint8_t t = d[j];
            if (t == 0x79) break; /* end tag */
            if (!(t & 0x80)) { j += 1 + (t & 7u); continue; }
            uint32_t dlen = d[j + 1] | (uint32_t)d[j + 2] << 8;
            const uint8_t *x = d + j + 3;
            if (t == tag && t == 0x87 && dlen >= 23 && x[0] == 0) {
                uint32_t min = *(const uint32_t *)(x + 7), size = *(const uint32_t *)(x + 19);
                if (size) { *lo = min; *hi = (uint64_t)min + size; return 0; }
            }
            if (t == tag && t == 0x8a && dlen >= 43 && x[0] == 0) {
                uint64_t min = *(const uint64_t *)(x + 11), size = *(const uint64_t *)(x + 35);
                if (size) { *lo = min; *hi = min + size; return 0; }
            }
            j += 3 + dlen;
        }
    }
    return -1;
}

/* Sizes every memory BAR of `bdf` (decode off meanwhile) and gives each one that reads 0 a
 * naturally aligned place from *next (below `hi`). Returns how many it assigned, -1 when the
 * window is too small. */
static int assign_bars(uint32_t bdf, uint64_t *next, uint64_t hi) {
    uint32_t cmd = cfg_r(bdf, 4, 2);
    int assigned = 0;
    cfg_w(bdf, 4, 2, cmd & ~3u);
    for (int i = 0; i < 6; i++) {
        uint32_t reg = 0x10 + 4 * (uint32_t)i, lo = cfg_r(bdf, reg, 4);
        int is64 = !(lo & 1) && (lo & 6) == 4 && i < 5;
        if (lo & 1) continue; /* I/O: not needed */
        uint32_t hiw = is64 ? cfg_r(bdf, reg + 4, 4) : 0;
        cfg_w(bdf, reg, 4, 0xffffffffu);
        uint32_t slo = cfg_r(bdf, reg, 4), shi = 0xffffffffu;
        if (is64) { cfg_w(bdf, reg + 4, 4, 0xffffffffu); shi = cfg_r(bdf, reg + 4, 4); }
        uint64_t mask = (uint64_t)shi << 32 | (slo & ~0xfu), size = (slo & ~0xfu) ? ~mask + 1 : 0;
        uint64_t at = (uint64_t)hiw << 32 | (lo & ~0xfu);
        if (size && !at) {
            at = (*next + size - 1) & ~(size - 1);
            if (at + size > hi) { cfg_w(bdf, 4, 2, cmd); return -1; }
            *next = at + size;
            assigned++;
        }
        cfg_w(bdf, reg, 4, (uint32_t)at | (lo & 0xfu));
        if (is64) cfg_w(bdf, reg + 4, 4, (uint32_t)(at >> 32));
        if (is64) i++;
    }
    cfg_w(bdf, 4, 2, cmd | 6u); /* memory decode, bus master */
    return assigned;
}

int pci_blk_find(uint64_t rsdp_hint, int devi, const struct vio_ops **ops, void **ctx, const char **why) {
    shim_ops.read = shim_read;
    shim_ops.write = shim_write;
    find_ecam(rsdp_hint);
    uint64_t lo = 0, hi = 0, next;
    if (!ecam && !dsdt_mem(rsdp_hint, "RES0", 0x8a, &lo, &hi)) {
        ecam = lo;
        puts_("PROBE: pci ecam from-dsdt"); kv("base", ecam); putc_('\n');
    }
    scan();
    find_virtio(0);
    struct vpci *p = 0;
    for (int i = 0, k = 0; i < nvdevs; i++)
        if (vdevs[i].device == 0x1042 && k++ == devi) { p = &vdevs[i]; break; }
    if (!p) { *why = "no-device"; return -1; }
    int win = dsdt_mem(rsdp_hint, "PCI0", 0x87, &lo, &hi);
    /* Well past whatever a function already decodes in the window (16 MiB: more than any BAR
     * of these devices; only a mix of assigned and unassigned BARs needs it). */
    next = lo;
    for (int i = 0; i < nfns; i++)
        for (int b = 0; b < 6; b++) {
            uint64_t a = bar_addr(fns[i].bdf, b);
            if (a >= lo && a < hi && a >= next) next = a + (16u << 20);
        }
    int assigned = win ? 0 : assign_bars(p->bdf, &next, hi);
    line("bench", p->bdf);
    kv("window_lo", lo); kv("window_hi", hi); kd("assigned", (uint64_t)(assigned > 0 ? assigned : 0));
    vpci_open(p, p->bdf, p->idx, 0);
    if (win) cfg_w(p->bdf, 4, 2, cfg_r(p->bdf, 4, 2) | 6u); /* the BARs as they are */
    kv("cmd", cfg_r(p->bdf, 4, 2)); kd("common_bar", p->cbar); kd("notify_bar", p->nbar);
    kd("msix_bar", p->msix_table & 7); kv("common", bar_of(p, p->cbar) + p->common);
    putc_('\n');
    if (assigned < 0) { *why = "window-too-small"; return -1; }
    if (!p->ok) { *why = win ? "no-window-bars-unassigned" : "not-virtio-pci-modern"; return -1; }
    /* MSI-X on, so the device has no INTx to raise, and no vector for the queue or the
     * configuration (shim_write gives them at QUEUE_READY): nothing is delivered. */
    p->msix = p->cap_msix != 0;
    p->cfg_vec = p->q_vec = NO_VECTOR;
    if (p->cap_msix) msix_ctl(p, 1, 0);
    *ops = &shim_ops;
    *ctx = p;
    *why = 0;
    return p->idx;
}

/* ---- Entry -------------------------------------------------------------------------------- */

void pci_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    (void)cmdline;
    shim_ops.read = shim_read;
    shim_ops.write = shim_write;
    find_ecam(rsdp_hint);
    scan();
    if (probe_word_is(mode, "list")) {
        list_mode(rsdp_hint);
    } else {
        find_virtio(0);
        if (probe_word_is(mode, "blk")) blk_mode();
        else if (probe_word_is(mode, "rng")) rng_mode();
        else if (probe_word_is(mode, "msix")) msix_mode();
        else if (probe_word_is(mode, "intx")) intx_mode();
        else if (probe_word_is(mode, "hostile")) hostile_mode();
        else puts_("PROBE: pci failed unknown-mode\n");
    }
    puts_("PROBE: pci done\n");
}
