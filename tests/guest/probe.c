/* The probe guest: a freestanding program entered like a Linux kernel, which reports over the
 * serial port what the VMM gave it, then ends as its command line asks (`probe.end=`).
 *
 * Report lines all start with "PROBE: " so tests can pick them out; see tests/conftest.py for
 * the parsers. Everything is reached RIP-relative and nothing needs relocation, so the same
 * code runs from the ELF image (linked at 2 MiB) and from the bzImage (loaded at himem_start).
 *
 * It also has a small polled virtio-mmio (version 2) + virtio-blk driver: `probe.blk=list`
 * reports the virtio devices in the DSDT, `probe.blk=test` exercises every disk, `probe.blk=bad`
 * sends the first one hostile requests, and `probe.bench=blkread|blkwrite|blkrand|blkid` times
 * requests (see blk_probe and bench_blk). A virtio-vsock driver on the same virtio-mmio code
 * talks to the host through the VMM's vsock device: `probe.vsock=info|test|bad` and
 * `probe.bench=vsockrx|vsocktx` (see vsock_probe and bench_vsock). The PCI platform and the
 * virtio-pci transport are pci.c's (`probe.pci=`); it runs blk_test on virtio-pci disks through
 * struct blk's `ops`, which answer the virtio-mmio register offsets for another transport. The
 * virtio-fs (FUSE) client is fs.c's (`probe.fs=list|test`), the 9P one p9.c's (`probe.p9=...`). */
#include <stdint.h>

#include "net.h" /* the virtio-net driver in net.c: probe.net=, probe.bench=nettx */
#include "pci.h" /* PCI and virtio-pci in pci.c: probe.pci= */
#include "fs.h"  /* the virtio-fs driver in fs.c: probe.fs= */
#include "p9.h"  /* the virtio-9p driver in p9.c: probe.p9= */

#define COM1 0x3f8
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void putc_(char c) {
    while (!(inb(COM1 + 5) & LSR_THR_EMPTY)) {}
    outb(COM1, (uint8_t)c);
}
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void put_hex(uint64_t v) {
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 0xf]);
}
static void put_dec(uint64_t v) {
    char buf[24];
    int n = 0;
    do { buf[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) putc_(buf[--n]);
}
static char getc_(void) {
    while (!(inb(COM1 + 5) & LSR_DATA_READY)) {}
    return (char)inb(COM1);
}

static const char *cmdline_arg(const char *cmdline, const char *key) {
    /* Returns the value of "key=" in the command line, or 0. */
    for (const char *p = cmdline; *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k && *q == '=') return q + 1;
    }
    return 0;
}
static int word_is(const char *v, const char *word) {
    if (!v) return 0;
    while (*word && *v == *word) { v++; word++; }
    return !*word && (*v == 0 || *v == ' ');
}

static uint64_t parse_dec(const char *v) {
    uint64_t n = 0;
    while (v && *v >= '0' && *v <= '9') n = n * 10 + (uint64_t)(*v++ - '0');
    return n;
}

static void reset(void) {
    puts_("PROBE: reset\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}

static void triple_fault(void) {
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idt = {0, 0};
    puts_("PROBE: triple fault\n");
    __asm__ volatile("lidt %0" ::"m"(idt));
    /* A page fault (nothing is mapped above 4 GiB) with no IDT: #PF, then #DF, then shutdown. */
    (void)*(volatile uint64_t *)(uintptr_t)0x100000000000ull;
}

static void echo(void) {
    char line[128];
    puts_("PROBE: echo ready\n");
    for (;;) {
        int n = 0;
        for (;;) {
            char c = getc_();
            if (c == '\r' || c == '\n') break;
            if (n < (int)sizeof(line) - 1) line[n++] = c;
        }
        line[n] = 0;
        puts_("PROBE: got ");
        puts_(line);
        putc_('\n');
        if (word_is(line, "reset")) reset();
    }
}

/* probe.end=hostile: what a hostile guest does to the VMM's devices (the host must survive
 * it all, bounded, and stay killable). Reports each step, then sits in `cli; hlt`.
 *  - every port 0..0xffff read at sizes 1, 2 and 4, then written 0 at each size;
 *  - the MMIO gap (3 GiB to 4 GiB) read at sizes 1, 2, 4 and 8 every 64 KiB, skipping the
 *    in-kernel LAPIC and IOAPIC pages;
 *  - every register of the exit-device, boot-marker and virtio pages (0xd0000000 up to
 *    0xd0020000) read and written (0) at every offset up to 0x140 at sizes 1, 2, 4 and 8,
 *    odd offsets included, except writes to the exit device (which would end the VM);
 *  - the guest-physical space between the end of RAM and the gap, every MiB, read and
 *    written at size 4 and 8. */
static void hostile_mmio(uint64_t a, int write) {
    volatile uint8_t *p8 = (volatile uint8_t *)(uintptr_t)a;
    if (write) {
        *p8 = 0;
        *(volatile uint16_t *)(uintptr_t)a = 0;
        *(volatile uint32_t *)(uintptr_t)a = 0;
        *(volatile uint64_t *)(uintptr_t)a = 0;
    } else {
        (void)*p8;
        (void)*(volatile uint16_t *)(uintptr_t)a;
        (void)*(volatile uint32_t *)(uintptr_t)a;
        (void)*(volatile uint64_t *)(uintptr_t)a;
    }
}

static void hostile(uint64_t ram_end) {
    for (uint32_t port = 0; port <= 0xffff; port++) { (void)inb((uint16_t)port); (void)inw((uint16_t)port); (void)inl((uint16_t)port); }
    puts_("PROBE: hostile ports read\n");
    for (uint32_t port = 0; port <= 0xffff; port++) { outb((uint16_t)port, 0); outw((uint16_t)port, 0); outl((uint16_t)port, 0); }
    puts_("PROBE: hostile ports written\n");
    for (uint64_t a = 0xc0000000ull; a < 0x100000000ull; a += 0x10000) {
        if ((a & ~0xfffffull) == 0xfee00000ull || (a & ~0xfffffull) == 0xfec00000ull) continue;
        hostile_mmio(a, 0);
    }
    puts_("PROBE: hostile gap read\n");
    for (uint64_t page = 0xd0000000ull; page < 0xd0020000ull; page += 0x1000) {
        for (uint64_t off = 0; off < 0x140; off++) {
            hostile_mmio(page + off, 0);
            if (page != 0xd0000000ull) hostile_mmio(page + off, 1);
        }
    }
    puts_("PROBE: hostile registers done\n");
    for (uint64_t a = (ram_end + 0xfffff) & ~0xfffffull; a < 0xc0000000ull; a += 0x100000) {
        (void)*(volatile uint32_t *)(uintptr_t)a;
        *(volatile uint64_t *)(uintptr_t)a = 0;
    }
    puts_("PROBE: hostile done\n");
    for (;;) __asm__ volatile("cli; hlt");
}

static void touch_unknown_hardware(void) {
    /* Ports and MMIO where no device lives must read as zero and swallow writes. */
    uint32_t pci = inl(0xcfc);
    outl(0xcf8, 0x80000000u);
    outb(0x80, 0x42);
    uint8_t cmos = inb(0x71);
    volatile uint32_t *gap = (volatile uint32_t *)(uintptr_t)0xd1000000u; /* not the exit device */
    uint32_t mmio = *gap;
    *gap = 0xdeadbeef;
    puts_("PROBE: unknown pci=");
    put_hex(pci);
    puts_(" cmos=");
    put_hex(cmos);
    puts_(" mmio=");
    put_hex(mmio);
    putc_('\n');
}


/* ---- Application processors ------------------------------------------------------------ */

#define LAPIC_BASE 0xfee00000u
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
#define AP_TRAMPOLINE 0x3000u
#define MAX_CPUS 256

struct ap_slots { uint64_t cr3, stacks, entry; uint32_t count; } __attribute__((packed));
extern const uint8_t ap_trampoline[], ap_trampoline_end[], ap_slots[];

static volatile uint32_t ap_started;
static volatile uint8_t print_lock;
/* probe.end=tick: APs count in ap_ticks[apic id] for ever (snapshot and fork tests). */
static volatile uint8_t ap_tick;
static volatile uint64_t ap_ticks[MAX_CPUS];
static uint8_t ap_stacks[MAX_CPUS][4096] __attribute__((aligned(4096)));

static void lock(void) { while (__atomic_test_and_set(&print_lock, __ATOMIC_ACQUIRE)) __asm__ volatile("pause"); }
static void unlock(void) { __atomic_clear(&print_lock, __ATOMIC_RELEASE); }

static uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v; }

static uint32_t my_apic_id(void) {
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    return b >> 24;
}

__attribute__((used)) static void ap_main(void) {
    uint32_t id = my_apic_id();
    lock();
    puts_("PROBE: ap apic_id=");
    put_dec(id);
    putc_('\n');
    unlock();
    __atomic_add_fetch(&ap_started, 1, __ATOMIC_RELEASE);
    if (ap_tick)
        for (;;) { ap_ticks[id & (MAX_CPUS - 1)]++; __asm__ volatile("pause"); }
}

/* probe.end=tick: a guest whose whole state is in memory, for snapshots and forks. It counts
 * in `tick_count` (memory, not a register) and prints
 *   PROBE: tick N mark=C aps=A,B,...
 * every so often: C is the last byte received on the serial port (`tick_mark`, memory too;
 * '-' until one arrives), A,B,... every AP's own count (probe.smp= starts them counting). */
/* probe.end=loop: a debugger's breakpoint target (bench case 12's round trip), its calls counted. */
static volatile uint64_t loop_count;
__attribute__((noinline, used)) static void loop_target(void) { loop_count++; }
static void loop_forever(void) {
    puts_("PROBE: looping\n");
    for (;;) loop_target();
}

static volatile uint64_t tick_count;
static volatile char tick_mark = '-';
static void tick(uint32_t cpus) {
    for (;;) {
        for (int spin = 0; spin < 20000; spin++) __asm__ volatile("pause");
        tick_count++;
        if (inb(COM1 + 5) & LSR_DATA_READY) {
            char c = (char)inb(COM1);
            if (c > ' ' && c < 127) tick_mark = c;
        }
        lock();
        puts_("PROBE: tick ");
        put_dec(tick_count);
        puts_(" mark=");
        putc_(tick_mark);
        puts_(" aps=");
        for (uint32_t i = 1; i < cpus; i++) { if (i > 1) putc_(','); put_dec(ap_ticks[i]); }
        putc_('\n');
        unlock();
    }
}

static uint8_t sum8(const uint8_t *p, uint32_t n) { uint8_t s = 0; while (n--) s += *p++; return s; }
static int sig_is(const uint8_t *p, const char *sig) { while (*sig) if (*p++ != (uint8_t)*sig++) return 0; return 1; }

/* The APIC ids of the enabled processors in the MADT; returns how many, or -1 without ACPI. */
static int madt_cpus(const uint8_t *zp, uint8_t *ids) {
    uint64_t rsdp = *(const uint64_t *)(zp + 0x70);
    for (uint32_t a = 0xe0000; !rsdp && a < 0x100000; a += 16)
        if (sig_is((const uint8_t *)(uintptr_t)a, "RSD PTR ") && !sum8((const uint8_t *)(uintptr_t)a, 20)) rsdp = a;
    if (!rsdp) return -1;
    const uint8_t *xsdt = (const uint8_t *)(uintptr_t)*(const uint64_t *)(uintptr_t)(rsdp + 24);
    uint32_t xlen = *(const uint32_t *)(xsdt + 4);
    for (uint32_t off = 36; off + 8 <= xlen; off += 8) {
        const uint8_t *t = (const uint8_t *)(uintptr_t)*(const uint64_t *)(xsdt + off);
        if (!sig_is(t, "APIC")) continue;
        uint32_t len = *(const uint32_t *)(t + 4);
        int n = 0;
        for (uint32_t e = 44; e + 2 <= len && t[e + 1]; e += t[e + 1])
            if (t[e] == 0 && (*(const uint32_t *)(t + e + 4) & 1) && n < MAX_CPUS) ids[n++] = t[e + 3];
        return n;
    }
    return -1;
}

/* The APIC ids of the enabled processors in the MP table; returns how many, or -1 without one. */
static int mptable_cpus(uint8_t *ids) {
    static const uint32_t ranges[][2] = {{0x9fc00, 0xa0000}, {0xf0000, 0x100000}};
    for (int r = 0; r < 2; r++) {
        for (uint32_t a = ranges[r][0]; a < ranges[r][1]; a += 16) {
            const uint8_t *fp = (const uint8_t *)(uintptr_t)a;
            if (!sig_is(fp, "_MP_") || sum8(fp, 16)) continue;
            const uint8_t *cfg = (const uint8_t *)(uintptr_t)*(const uint32_t *)(fp + 4);
            if (!sig_is(cfg, "PCMP")) return -1;
            uint16_t count = *(const uint16_t *)(cfg + 34);
            const uint8_t *e = cfg + 44;
            int n = 0;
            for (uint16_t i = 0; i < count; i++) {
                if (e[0] == 0) { if ((e[3] & 1) && n < MAX_CPUS) ids[n++] = e[1]; e += 20; }
                else e += 8;
            }
            return n;
        }
    }
    return -1;
}

static void start_aps(const uint8_t *zp, const char *source) {
    uint8_t ids[MAX_CPUS];
    int n = word_is(source, "mptable") ? mptable_cpus(ids) : madt_cpus(zp, ids);
    puts_("PROBE: cpus source=");
    puts_(word_is(source, "mptable") ? "mptable" : "madt");
    puts_(" count=");
    if (n < 0) { puts_("none\n"); return; }
    put_dec((uint64_t)n);
    puts_(" apic_ids=");
    for (int i = 0; i < n; i++) { if (i) putc_(','); put_dec(ids[i]); }
    putc_('\n');

    uint8_t *tramp = (uint8_t *)(uintptr_t)AP_TRAMPOLINE;
    for (const uint8_t *p = ap_trampoline; p < ap_trampoline_end; p++) tramp[p - ap_trampoline] = *p;
    struct ap_slots *slots = (struct ap_slots *)(tramp + (ap_slots - ap_trampoline));
    uint64_t cr3, entry;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    __asm__ volatile("lea ap_main(%%rip), %0" : "=r"(entry));
    slots->cr3 = cr3;
    slots->stacks = (uint64_t)(uintptr_t)ap_stacks;
    slots->entry = entry;
    slots->count = 0;

    lapic_write(LAPIC_SVR, 0x1ff); /* software-enable the local APIC */
    uint32_t self = my_apic_id();
    int expected = 0;
    lock();
    for (int i = 0; i < n; i++) {
        if (ids[i] == self) continue;
        expected++;
        lapic_write(LAPIC_ICR_HI, (uint32_t)ids[i] << 24);
        lapic_write(LAPIC_ICR_LO, 0x4500); /* INIT, assert */
        while (lapic_read(LAPIC_ICR_LO) & ICR_BUSY) {}
        for (int sipi = 0; sipi < 2; sipi++) {
            lapic_write(LAPIC_ICR_HI, (uint32_t)ids[i] << 24);
            lapic_write(LAPIC_ICR_LO, 0x4600 | (AP_TRAMPOLINE >> 12)); /* start-up */
            while (lapic_read(LAPIC_ICR_LO) & ICR_BUSY) {}
        }
    }
    unlock();
    /* Every AP reports within a bounded wait; one that never starts leaves a short count. */
    for (uint64_t spin = 0; spin < 400000000ull && ap_started < (uint32_t)expected; spin++) __asm__ volatile("pause");
    lock();
    puts_("PROBE: smp started=");
    put_dec(ap_started);
    puts_(" expected=");
    put_dec((uint64_t)expected);
    putc_('\n');
    unlock();
}

/* ---- Memory helpers: gcc may emit calls to these even in a freestanding build ------------ */

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memset(void *d, int c, unsigned long n) {
    uint8_t *p = d;
    while (n--) *p++ = (uint8_t)c;
    return d;
}
/* Unaligned 64-bit access, for the loops below that take 8 bytes at a time: every guest
 * instruction counts where the CPU is emulated (PVM), more than the bytes. */
typedef uint64_t __attribute__((aligned(1), may_alias)) u64u;

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memcpy(void *d, const void *s, unsigned long n) {
    uint8_t *p = d;
    const uint8_t *q = s;
    for (; n >= 8; n -= 8, p += 8, q += 8) *(u64u *)p = *(const u64u *)q;
    while (n--) *p++ = *q++;
    return d;
}

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* The TSC's frequency in kHz from CPUID (KVM's 0x40000010, the crystal leaf 0x15, or the base
 * frequency in 0x16), or 0 when no leaf tells; *source names the leaf. */
static uint64_t tsc_khz(const char **source) {
    uint32_t a, b, c, d;
    *source = "none";
    cpuid(1, &a, &b, &c, &d);
    if (c >> 31) {
        cpuid(0x40000000, &a, &b, &c, &d);
        if (a >= 0x40000010 && a < 0x40000100) {
            cpuid(0x40000010, &a, &b, &c, &d);
            if (a) { *source = "0x40000010"; return a; }
        }
    }
    cpuid(0, &a, &b, &c, &d);
    uint32_t max = a;
    if (max >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a && b && c) { *source = "0x15"; return (uint64_t)c * b / a / 1000; }
    }
    if (max >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if (a & 0xffff) { *source = "0x16"; return (uint64_t)(a & 0xffff) * 1000; }
    }
    return 0;
}

/* A TSC deadline `ms` milliseconds from now (assuming 3 GHz when CPUID does not tell). */
static uint64_t deadline_ms(uint64_t ms) {
    static uint64_t khz;
    if (!khz) {
        const char *src;
        khz = tsc_khz(&src);
        if (!khz) khz = 3000000;
    }
    return rdtsc() + ms * khz;
}

/* probe.end=power: a guest that honours the ACPI power button, as Linux's button driver does.
 * It sets PWRBTN_EN in PM1a_EN, then prints "PROBE: power waiting N" about ten times a second
 * (a steady trickle, not a flood) while it polls PWRBTN_STS in PM1a_STS. Once the button is
 * pressed it clears the status, prints "PROBE: power button" and writes SLP_TYP=S5 with
 * SLP_EN to PM1a_CNT: the VM ends with reason poweroff. */
#define PM1A_STS 0x600
#define PM1A_EN 0x602
#define PM1A_CNT 0x604
#define PM1_PWRBTN (1 << 8)
static void power_button_wait(void) {
    outw(PM1A_EN, PM1_PWRBTN);
    for (uint64_t i = 0;; i++) {
        puts_("PROBE: power waiting ");
        put_dec(i);
        putc_('\n');
        for (uint64_t end = deadline_ms(100); rdtsc() < end;) {
            if (inw(PM1A_STS) & PM1_PWRBTN) {
                outw(PM1A_STS, PM1_PWRBTN); /* write 1 to clear */
                puts_("PROBE: power button\n");
                outw(PM1A_CNT, (uint16_t)((5 << 10) | (1 << 13))); /* SLP_TYP=S5, SLP_EN */
                for (;;) __asm__ volatile("pause");
            }
            for (int spin = 0; spin < 2000; spin++) __asm__ volatile("pause");
        }
    }
}

/* ---- ACPI: the RSDP, a table by signature ---------------------------------------------- */

static uint32_t le32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* The RSDP: `hint` (the zero page's acpi_rsdp_addr, PVH's rsdp_paddr) or found in the BIOS area. */
static const uint8_t *acpi_rsdp(uint64_t hint) {
    if (hint) return (const uint8_t *)(uintptr_t)hint;
    for (uint32_t a = 0xe0000; a < 0x100000; a += 16)
        if (sig_is((const uint8_t *)(uintptr_t)a, "RSD PTR ") && !sum8((const uint8_t *)(uintptr_t)a, 20))
            return (const uint8_t *)(uintptr_t)a;
    return 0;
}

/* The table with signature `sig` through the XSDT (ACPI 2.0+) or the RSDT, or 0. */
static const uint8_t *acpi_table(const uint8_t *rsdp, const char *sig) {
    if (!rsdp || !sig_is(rsdp, "RSD PTR ")) return 0;
    uint64_t xsdt = rsdp[15] >= 2 ? le64(rsdp + 24) : 0;
    const uint8_t *sdt = (const uint8_t *)(uintptr_t)(xsdt ? xsdt : le32(rsdp + 16));
    uint32_t entry = xsdt ? 8 : 4;
    if (!sdt) return 0;
    uint32_t len = le32(sdt + 4);
    for (uint32_t off = 36; off + entry <= len; off += entry) {
        uint64_t a = entry == 8 ? le64(sdt + off) : le32(sdt + off);
        if (a && sig_is((const uint8_t *)(uintptr_t)a, sig)) return (const uint8_t *)(uintptr_t)a;
    }
    return 0;
}

/* ---- virtio-mmio devices: found in the DSDT (or on the command line) -------------------- */

#define VIRTIO_MAX_DEVS 32

struct vloc { uint64_t base, len; uint32_t gsi; };

static int bytes_at(const uint8_t *p, const uint8_t *pat, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) if (p[i] != pat[i]) return 0;
    return 1;
}

/* The DSDT: the FADT's X_DSDT (offset 140), else its DSDT (offset 40). */
static const uint8_t *acpi_dsdt(const uint8_t *rsdp) {
    const uint8_t *fadt = acpi_table(rsdp, "FACP");
    if (!fadt) return 0;
    uint32_t flen = le32(fadt + 4);
    uint64_t dsdt_addr = flen >= 148 ? le64(fadt + 140) : 0;
    if (!dsdt_addr) dsdt_addr = le32(fadt + 40);
    const uint8_t *dsdt = (const uint8_t *)(uintptr_t)dsdt_addr;
    return dsdt && sig_is(dsdt, "DSDT") ? dsdt : 0;
}

/* Whether the DSDT has a DWord EISA id (e.g. 0x0105d041 for PNP0501) somewhere. */
static int dsdt_has_eisaid(const uint8_t *dsdt, uint32_t id) {
    const uint8_t pat[5] = {0x0c, (uint8_t)id, (uint8_t)(id >> 8), (uint8_t)(id >> 16), (uint8_t)(id >> 24)};
    uint32_t len = le32(dsdt + 4);
    for (uint32_t i = 36; i + 5 <= len; i++) if (bytes_at(dsdt + i, pat, 5)) return 1;
    return 0;
}

/* Each AML Device whose _HID is the string "LNRO0005" (virtio-mmio), in DSDT order: the first
 * Memory32Fixed and Extended Interrupt descriptors after the _HID and before the next one. */
static int virtio_from_dsdt(const uint8_t *rsdp, struct vloc *out, int max) {
    static const uint8_t hid[] = {0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0};
    static const uint8_t hid_name[] = {'_', 'H', 'I', 'D'};
    static const uint8_t mem32[] = {0x86, 0x09, 0x00};
    static const uint8_t xirq[] = {0x89, 0x06, 0x00};
    const uint8_t *dsdt = acpi_dsdt(rsdp);
    if (!dsdt) return -1;
    uint32_t len = le32(dsdt + 4);
    int n = 0;
    for (uint32_t i = 36; i + sizeof(hid) <= len && n < max; i++) {
        if (!bytes_at(dsdt + i, hid, sizeof(hid))) continue;
        uint32_t end = i + sizeof(hid);
        while (end + sizeof(hid_name) <= len && !bytes_at(dsdt + end, hid_name, sizeof(hid_name))) end++;
        if (end + sizeof(hid_name) > len) end = len; /* the last device: up to the table's end */
        struct vloc v = {0, 0, 0};
        int have_mem = 0, have_irq = 0;
        for (uint32_t j = i + sizeof(hid); j + 9 <= end && !(have_mem && have_irq); j++) {
            if (!have_mem && j + 12 <= end && bytes_at(dsdt + j, mem32, 3)) {
                v.base = le32(dsdt + j + 4);
                v.len = le32(dsdt + j + 8);
                have_mem = 1;
            } else if (!have_irq && j + 9 <= end && bytes_at(dsdt + j, xirq, 3) && dsdt[j + 4] >= 1) {
                v.gsi = le32(dsdt + j + 5);
                have_irq = 1;
            }
        }
        if (have_mem) out[n++] = v;
        i = end - 1;
    }
    return n;
}

static uint64_t parse_num(const char **pv) {
    const char *v = *pv;
    uint64_t n = 0;
    if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
        for (v += 2;; v++) {
            char c = *v;
            if (c >= '0' && c <= '9') n = n * 16 + (uint64_t)(c - '0');
            else if (c >= 'a' && c <= 'f') n = n * 16 + (uint64_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') n = n * 16 + (uint64_t)(c - 'A' + 10);
            else break;
        }
    } else {
        while (*v >= '0' && *v <= '9') n = n * 10 + (uint64_t)(*v++ - '0');
    }
    if (*v == 'K' || *v == 'k') { n <<= 10; v++; }
    else if (*v == 'M' || *v == 'm') { n <<= 20; v++; }
    else if (*v == 'G' || *v == 'g') { n <<= 30; v++; }
    *pv = v;
    return n;
}

/* Linux's virtio_mmio.device=<size>@<base>:<irq>[:<id>], for VMs without ACPI. */
static int virtio_from_cmdline(const char *cmdline, struct vloc *out, int max) {
    int n = 0;
    for (const char *p = cmdline; p && *p && n < max; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *v = cmdline_arg(p, "virtio_mmio.device");
        if (v != p + sizeof("virtio_mmio.device")) continue; /* the key must be right here */
        struct vloc l = {0, 0, 0};
        l.len = parse_num(&v);
        if (*v++ != '@') continue;
        l.base = parse_num(&v);
        if (*v++ != ':') continue;
        l.gsi = (uint32_t)parse_num(&v);
        out[n++] = l;
    }
    return n;
}

static int virtio_devices(const char *cmdline, uint64_t rsdp_hint, struct vloc *out, const char **source) {
    int n = virtio_from_dsdt(acpi_rsdp(rsdp_hint), out, VIRTIO_MAX_DEVS);
    *source = "dsdt";
    if (n <= 0) {
        n = virtio_from_cmdline(cmdline, out, VIRTIO_MAX_DEVS);
        *source = n ? "cmdline" : "none";
    }
    return n;
}

/* virtio-mmio registers (virtio 1.2, 4.2.2) */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_VENDOR_ID 0x00c
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC 0x080
#define VM_QUEUE_DRIVER 0x090
#define VM_QUEUE_DEVICE 0x0a0
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

#define S_ACKNOWLEDGE 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define S_NEEDS_RESET 0x40u
#define S_FAILED 0x80u

#define VIRTIO_MAGIC 0x74726976u
#define F_VERSION_1 (1ull << 32)
#define F_BLK_SEG_MAX (1ull << 2)
#define F_BLK_RO (1ull << 5)
#define F_BLK_BLK_SIZE (1ull << 6)
#define F_BLK_FLUSH (1ull << 9)
#define F_BLK_DISCARD (1ull << 13)
#define F_BLK_WRITE_ZEROES (1ull << 14)
/* What this driver accepts; never EVENT_IDX (29) or INDIRECT_DESC (28). */
#define BLK_WANTED (F_VERSION_1 | F_BLK_SEG_MAX | F_BLK_RO | F_BLK_BLK_SIZE | F_BLK_FLUSH | F_BLK_DISCARD | F_BLK_WRITE_ZEROES)

#define BLK_T_IN 0u
#define BLK_T_OUT 1u
#define BLK_T_FLUSH 4u
#define BLK_T_GET_ID 8u
#define BLK_T_DISCARD 11u
#define BLK_T_WRITE_ZEROES 13u

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }
#define barrier() __asm__ volatile("" ::: "memory")

static void list_virtio(const struct vloc *v, int n, const char *source) {
    puts_("PROBE: virtio count=");
    put_dec((uint64_t)n);
    puts_(" source=");
    puts_(source);
    putc_('\n');
    for (int i = 0; i < n; i++) {
        puts_("PROBE: virtio dev=");
        put_dec((uint64_t)i);
        puts_(" base=");
        put_hex(v[i].base);
        puts_(" len=");
        put_hex(v[i].len);
        puts_(" gsi=");
        put_dec(v[i].gsi);
        puts_(" magic=");
        put_hex(mmio_read32(v[i].base + VM_MAGIC));
        puts_(" version=");
        put_dec(mmio_read32(v[i].base + VM_VERSION));
        puts_(" device_id=");
        put_dec(mmio_read32(v[i].base + VM_DEVICE_ID));
        putc_('\n');
    }
}

/* ---- A virtio-blk driver: one split virtqueue, polled ---------------------------------- */

#define VQ_MAX 256
#define BLK_DPS 20                 /* descriptors per request slot: header, 18 data, status */
#define BLK_MAX_SEGS (BLK_DPS - 2)
#define BLK_SLOTS 8                /* slots of BLK_DPS descriptors, the usual layout */
#define BLK_SLOTS_MAX 64           /* the bench's compact layout (fewer descriptors a slot) */
#define BLK_BUF_SIZE (1u << 20)
#define BLK_TIMEOUT_MS 10000

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct blk_hdr { uint32_t type, reserved; uint64_t sector; };
struct blk_range { uint64_t sector; uint32_t num, flags; };
struct blk_slot { struct blk_hdr hdr; uint8_t status; uint8_t pad[15]; };
struct seg { uint64_t addr; uint32_t len; uint16_t flags; };

/* The queue's memory (descriptors, driver area, device area: a page each); one device at a
 * time uses it, and every device is reset before the next one starts. */
static uint8_t vq_mem[3][4096] __attribute__((aligned(4096)));
static struct blk_slot blk_slots[BLK_SLOTS_MAX] __attribute__((aligned(64)));
static uint8_t blk_buf[BLK_BUF_SIZE] __attribute__((aligned(4096)));

struct blk {
    int n;
    uint64_t base;
    uint32_t qsize, slots, dps; /* dps: descriptors a slot (BLK_DPS unless the bench packs them) */
    uint16_t avail_idx, used_idx;
    uint64_t offered, features, capacity;
    uint32_t seg_max, blk_size, last_len, last_id;
    int ro;
    /* Another transport (pci.c's virtio-pci): ops answers the virtio-mmio register offsets
     * for it; 0 for virtio-mmio at `base`. */
    const struct vio_ops *ops;
    void *ctx;
};

#define VQ_DESC ((volatile struct vring_desc *)(uintptr_t)vq_mem[0])
#define VQ_AVAIL ((volatile uint16_t *)(uintptr_t)vq_mem[1])          /* flags, idx, ring[] */
#define VQ_USED ((volatile uint16_t *)(uintptr_t)vq_mem[2])           /* flags, idx */
#define VQ_USED_RING ((volatile uint32_t *)(uintptr_t)(vq_mem[2] + 4)) /* {id, len}[] */

static uint32_t vr(uint64_t base, uint32_t off) { return mmio_read32(base + off); }
static void vw(uint64_t base, uint32_t off, uint32_t v) { mmio_write32(base + off, v); }
/* A register of the device: virtio-mmio's, or the same offset answered by another transport. */
static uint32_t vio_r(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t off) {
    return ops ? ops->read(ctx, off, 4) : vr(base, off);
}
static void vio_w(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t off, uint32_t v) {
    if (ops) ops->write(ctx, off, v);
    else vw(base, off, v);
}
static uint32_t blk_r(const struct blk *b, uint32_t off) { return vio_r(b->ops, b->ctx, b->base, off); }
static void blk_w(const struct blk *b, uint32_t off, uint32_t v) { vio_w(b->ops, b->ctx, b->base, off, v); }
static uint8_t cfg8(const struct blk *b, uint32_t off) {
    if (b->ops) return (uint8_t)b->ops->read(b->ctx, VM_CONFIG + off, 1);
    return *(volatile uint8_t *)(uintptr_t)(b->base + VM_CONFIG + off);
}
static uint32_t cfg32(const struct blk *b, uint32_t off) { return blk_r(b, VM_CONFIG + off); }
/* A 64-bit field of a device's configuration space, read as two halves under its generation. */
static uint64_t cfg64_on(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t off) {
    uint32_t gen, lo, hi;
    int tries = 0;
    do {
        gen = vio_r(ops, ctx, base, VM_CONFIG_GENERATION);
        lo = vio_r(ops, ctx, base, VM_CONFIG + off);
        hi = vio_r(ops, ctx, base, VM_CONFIG + off + 4);
    } while (gen != vio_r(ops, ctx, base, VM_CONFIG_GENERATION) && ++tries < 100);
    return (uint64_t)hi << 32 | lo;
}
static uint64_t cfg64(uint64_t base, uint32_t off) { return cfg64_on(0, 0, base, off); }

/* ---- virtio-mmio bring-up, shared by the drivers (virtio 1.2, 3.1.1 and 4.2.3) ----------- */

/* The bring-up takes (ops, ctx, base) as vio_r does; the plain names are virtio-mmio's. */
static void virtio_reset_on(const struct vio_ops *ops, void *ctx, uint64_t base) {
    vio_w(ops, ctx, base, VM_STATUS, 0);
    for (int i = 0; i < 1000000 && vio_r(ops, ctx, base, VM_STATUS); i++) __asm__ volatile("pause");
}
static void virtio_reset(uint64_t base) { virtio_reset_on(0, 0, base); }
static void blk_reset(struct blk *b) { virtio_reset_on(b->ops, b->ctx, b->base); }

/* Resets the device at `base`, checks it is a version-2 device with `device_id`, then
 * ACKNOWLEDGE, DRIVER, the offered features that are in `wanted` (VERSION_1 required) and
 * FEATURES_OK. Returns 0, or why it went wrong. */
static const char *virtio_begin_on(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t device_id, uint64_t wanted,
                                   uint64_t *offered, uint64_t *features) {
    virtio_reset_on(ops, ctx, base);
    if (vio_r(ops, ctx, base, VM_MAGIC) != VIRTIO_MAGIC || vio_r(ops, ctx, base, VM_VERSION) != 2 || vio_r(ops, ctx, base, VM_DEVICE_ID) != device_id)
        return device_id == 2 ? "not-virtio-blk-v2" : "not-the-device-v2";
    if (vio_r(ops, ctx, base, VM_STATUS) != 0) return "reset-failed";
    vio_w(ops, ctx, base, VM_STATUS, S_ACKNOWLEDGE);
    vio_w(ops, ctx, base, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    vio_w(ops, ctx, base, VM_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = vio_r(ops, ctx, base, VM_DEVICE_FEATURES);
    vio_w(ops, ctx, base, VM_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = vio_r(ops, ctx, base, VM_DEVICE_FEATURES);
    *offered = hi << 32 | lo;
    *features = *offered & wanted;
    if (!(*features & F_VERSION_1)) return "no-version-1";
    vio_w(ops, ctx, base, VM_DRIVER_FEATURES_SEL, 0);
    vio_w(ops, ctx, base, VM_DRIVER_FEATURES, (uint32_t)*features);
    vio_w(ops, ctx, base, VM_DRIVER_FEATURES_SEL, 1);
    vio_w(ops, ctx, base, VM_DRIVER_FEATURES, (uint32_t)(*features >> 32));
    vio_w(ops, ctx, base, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(vio_r(ops, ctx, base, VM_STATUS) & S_FEATURES_OK)) return "features-not-ok";
    return 0;
}

static const char *virtio_begin(uint64_t base, uint32_t device_id, uint64_t wanted, uint64_t *offered, uint64_t *features) {
    return virtio_begin_on(0, 0, base, device_id, wanted, offered, features);
}

/* Selects queue `q` and returns its QueueNumMax (0: no such queue). */
static uint32_t virtio_queue_max_on(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t q) {
    vio_w(ops, ctx, base, VM_QUEUE_SEL, q);
    return vio_r(ops, ctx, base, VM_QUEUE_NUM_MAX);
}

/* Queue `q`: `num` entries, its three parts at the given addresses (zeroed by the caller),
 * then QueueReady. Returns 0, or why not. */
static const char *virtio_queue_on(const struct vio_ops *ops, void *ctx, uint64_t base, uint32_t q, uint32_t num, uint64_t desc,
                                   uint64_t driver, uint64_t device) {
    vio_w(ops, ctx, base, VM_QUEUE_SEL, q);
    if (vio_r(ops, ctx, base, VM_QUEUE_READY)) return "queue-already-ready";
    vio_w(ops, ctx, base, VM_QUEUE_NUM, num);
    vio_w(ops, ctx, base, VM_QUEUE_DESC, (uint32_t)desc);
    vio_w(ops, ctx, base, VM_QUEUE_DESC + 4, (uint32_t)(desc >> 32));
    vio_w(ops, ctx, base, VM_QUEUE_DRIVER, (uint32_t)driver);
    vio_w(ops, ctx, base, VM_QUEUE_DRIVER + 4, (uint32_t)(driver >> 32));
    vio_w(ops, ctx, base, VM_QUEUE_DEVICE, (uint32_t)device);
    vio_w(ops, ctx, base, VM_QUEUE_DEVICE + 4, (uint32_t)(device >> 32));
    vio_w(ops, ctx, base, VM_QUEUE_READY, 1);
    return 0;
}

static uint32_t virtio_queue_max(uint64_t base, uint32_t q) { return virtio_queue_max_on(0, 0, base, q); }
static const char *virtio_queue(uint64_t base, uint32_t q, uint32_t num, uint64_t desc, uint64_t driver, uint64_t device) {
    return virtio_queue_on(0, 0, base, q, num, desc, driver, device);
}

#define QNUM_DEFAULT 0xffffffffu
#define S_LIVE (S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)

/* Reset, negotiate features and set up queue 0 with `qnum` entries (QNUM_DEFAULT: as many as
 * the device allows, up to 256) at the given addresses, then set DRIVER_OK. Returns the Status register as read back at the end, or 0 with *why
 * set when it went wrong before DRIVER_OK. */
static uint32_t blk_setup(struct blk *b, uint32_t qnum, uint64_t desc, uint64_t driver, uint64_t device, const char **why) {
    *why = virtio_begin_on(b->ops, b->ctx, b->base, 2, BLK_WANTED, &b->offered, &b->features);
    if (*why) return 0;
    uint32_t max = virtio_queue_max_on(b->ops, b->ctx, b->base, 0);
    if (!max) { *why = "no-queue-0"; return 0; }
    if (qnum == QNUM_DEFAULT) qnum = max < VQ_MAX ? max : VQ_MAX;
    b->qsize = qnum ? qnum : 1; /* only ever a divisor once the device is live */
    b->slots = qnum / BLK_DPS < BLK_SLOTS ? qnum / BLK_DPS : BLK_SLOTS;
    b->dps = BLK_DPS;
    b->avail_idx = b->used_idx = 0;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < 4096; i++) ((volatile uint8_t *)vq_mem[p])[i] = 0;
    *why = virtio_queue_on(b->ops, b->ctx, b->base, 0, qnum, desc, driver, device);
    if (*why) return 0;
    blk_w(b, VM_STATUS, S_LIVE);
    return blk_r(b, VM_STATUS);
}

/* The usual set-up: the queue as large as the device allows (up to 256), in vq_mem. Returns 0
 * when the device is live, else a reason. */
static const char *blk_init(struct blk *b) {
    const char *why;
    uint32_t s = blk_setup(b, QNUM_DEFAULT, (uint64_t)(uintptr_t)vq_mem[0], (uint64_t)(uintptr_t)vq_mem[1],
                           (uint64_t)(uintptr_t)vq_mem[2], &why);
    if (why) return why;
    if (s != S_LIVE) return "driver-ok-refused";
    if (b->slots == 0) return "queue-too-small";
    b->ro = (b->features & F_BLK_RO) != 0;
    b->capacity = cfg64_on(b->ops, b->ctx, b->base, 0);
    b->seg_max = (b->features & F_BLK_SEG_MAX) ? cfg32(b, 0x0c) : 0;
    b->blk_size = (b->features & F_BLK_BLK_SIZE) ? cfg32(b, 0x14) : 512;
    return 0;
}

static void blk_notify(const struct blk *b) {
    __asm__ volatile("mfence" ::: "memory");
    blk_w(b, VM_QUEUE_NOTIFY, 0);
}

/* Writes slot `slot`'s descriptor chain: its header (of type `type`), the data segments, its
 * status byte. A chain stays valid for requests of the same shape: the bench writes each
 * slot's once (every guest instruction counts where the CPU is emulated, as on PVM). */
static void blk_chain(const struct blk *b, uint32_t slot, uint32_t type, const struct seg *segs, int nseg) {
    struct blk_slot *s = &blk_slots[slot];
    uint16_t d = (uint16_t)(slot * b->dps);
    s->hdr.type = type;
    s->hdr.reserved = 0;
    VQ_DESC[d].addr = (uint64_t)(uintptr_t)&s->hdr;
    VQ_DESC[d].len = sizeof(s->hdr);
    VQ_DESC[d].flags = VRING_DESC_F_NEXT;
    VQ_DESC[d].next = (uint16_t)(d + 1);
    for (int i = 0; i < nseg; i++) {
        volatile struct vring_desc *e = &VQ_DESC[d + 1 + i];
        e->addr = segs[i].addr;
        e->len = segs[i].len;
        e->flags = (uint16_t)(segs[i].flags | VRING_DESC_F_NEXT);
        e->next = (uint16_t)(d + 2 + i);
    }
    volatile struct vring_desc *st = &VQ_DESC[d + 1 + nseg];
    st->addr = (uint64_t)(uintptr_t)&s->status;
    st->len = 1;
    st->flags = VRING_DESC_F_WRITE;
    st->next = 0;
}

/* Makes slot `slot`'s chain available for `sector` (without notifying). */
static void blk_submit(struct blk *b, uint32_t slot, uint64_t sector) {
    blk_slots[slot].hdr.sector = sector;
    *(volatile uint8_t *)&blk_slots[slot].status = 0xff;
    barrier();
    VQ_AVAIL[2 + (b->avail_idx & (b->qsize - 1))] = (uint16_t)(slot * b->dps);
    barrier();
    VQ_AVAIL[1] = ++b->avail_idx;
}

/* Posts a request in slot `slot`: header, the data segments, the status byte. */
static void blk_post(struct blk *b, uint32_t slot, uint32_t type, uint64_t sector, const struct seg *segs, int nseg) {
    blk_chain(b, slot, type, segs, nseg);
    blk_submit(b, slot, sector);
}

/* Waits up to `ms` milliseconds until the device used a chain; returns 0 and sets
 * last_id/last_len, or -1 at the deadline. */
static int blk_reap(struct blk *b, uint64_t ms) {
    uint64_t deadline = 0;
    for (uint32_t spin = 1; VQ_USED[1] == b->used_idx; spin++) {
        /* The clock only now and then: reading it may cost an exit (PVM). */
        if (!(spin & 1023)) {
            if (!deadline) deadline = deadline_ms(ms);
            else if (rdtsc() > deadline) return -1;
        }
        __asm__ volatile("pause");
    }
    barrier();
    uint32_t i = b->used_idx & (b->qsize - 1);
    b->last_id = VQ_USED_RING[2 * i];
    b->last_len = VQ_USED_RING[2 * i + 1];
    b->used_idx++;
    return 0;
}

/* One request, waited for: its status byte (0 OK, 1 IOERR, 2 UNSUPP, 255 not written), or
 * -1 when the device never answered. */
static int blk_do(struct blk *b, uint32_t type, uint64_t sector, const struct seg *segs, int nseg) {
    blk_post(b, 0, type, sector, segs, nseg);
    blk_notify(b);
    if (blk_reap(b, BLK_TIMEOUT_MS)) return -1;
    return *(volatile uint8_t *)&blk_slots[0].status;
}

static int blk_rw(struct blk *b, uint32_t type, uint64_t sector, uint8_t *buf, uint32_t len) {
    struct seg s = {(uint64_t)(uintptr_t)buf, len, (uint16_t)(type == BLK_T_IN ? VRING_DESC_F_WRITE : 0)};
    return blk_do(b, type, sector, &s, 1);
}

static int blk_range_req(struct blk *b, uint32_t type, uint64_t sector, uint32_t num, uint32_t flags) {
    static struct blk_range r __attribute__((aligned(16)));
    r.sector = sector;
    r.num = num;
    r.flags = flags;
    struct seg s = {(uint64_t)(uintptr_t)&r, sizeof(r), 0};
    return blk_do(b, type, sector, &s, 1);
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, uint32_t n) {
    const uint64_t prime = 0x100000001b3ull;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w = *(const u64u *)p;
#define FNV_STEP h = (h ^ (w & 0xff)) * prime, w >>= 8
        FNV_STEP; FNV_STEP; FNV_STEP; FNV_STEP; FNV_STEP; FNV_STEP; FNV_STEP; FNV_STEP;
#undef FNV_STEP
    }
    for (; n; n--) h = (h ^ *p++) * prime;
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static uint8_t pattern(uint64_t sector, uint32_t i) { return (uint8_t)((sector * 31 + i) & 0xff); }

static void put_status(const char *key, int s) {
    puts_(key);
    if (s < 0) puts_("timeout");
    else put_dec((uint64_t)s);
}

static void blk_line(const struct blk *b) {
    puts_("PROBE: blk dev=");
    put_dec((uint64_t)b->n);
}

/* Reads sectors 0..7 as three segments of different sizes, in buffers out of order in memory;
 * `cut` picks where the segments end (sector multiples or not). Returns the status and the
 * hash of the 4096 bytes in disk order. */
static int blk_read_scattered(struct blk *b, const uint32_t cut[2], uint64_t *fnv) {
    uint8_t *parts[3] = {blk_buf + 0x20000, blk_buf + 0x10000, blk_buf + 0x30000};
    uint32_t lens[3] = {cut[0], cut[1] - cut[0], 4096 - cut[1]};
    struct seg segs[3];
    for (int i = 0; i < 3; i++) {
        for (uint32_t j = 0; j < lens[i]; j++) parts[i][j] = 0xa5;
        segs[i].addr = (uint64_t)(uintptr_t)parts[i];
        segs[i].len = lens[i];
        segs[i].flags = VRING_DESC_F_WRITE;
    }
    int st = blk_do(b, BLK_T_IN, 0, segs, 3);
    uint64_t h = FNV_INIT;
    for (int i = 0; i < 3; i++) h = fnv1a(h, parts[i], lens[i]);
    *fnv = h;
    return st;
}

/* probe.blk=test on one device: identity, reads, then writes (writable) or refused writes
 * (read-only), requests past the end; the device is reset at the end. */
static void blk_test(struct blk *b) {
    const char *why = blk_init(b);
    if (why) {
        blk_line(b);
        puts_(" failed init=");
        puts_(why);
        puts_(" status=");
        put_hex(blk_r(b, VM_STATUS));
        putc_('\n');
        blk_reset(b);
        return;
    }
    static uint8_t id[20] __attribute__((aligned(16)));
    for (int i = 0; i < 20; i++) id[i] = 0;
    struct seg idseg = {(uint64_t)(uintptr_t)id, 20, VRING_DESC_F_WRITE};
    int id_st = blk_do(b, BLK_T_GET_ID, 0, &idseg, 1);
    uint32_t id_len = b->last_len;
    /* The used entry can be visible a moment before the device raises its
     * interrupt (it signals once per round, after the ring update), so wait
     * for the bit as an interrupt handler would, bounded by a deadline. */
    uint32_t isr = 0;
    for (uint64_t end = deadline_ms(BLK_TIMEOUT_MS); !(isr = blk_r(b, VM_INTERRUPT_STATUS)) && rdtsc() < end;) {
    }
    blk_w(b, VM_INTERRUPT_ACK, isr);
    uint32_t isr_after = blk_r(b, VM_INTERRUPT_STATUS);

    blk_line(b);
    puts_(" features=");
    put_hex(b->offered);
    puts_(" capacity=");
    put_dec(b->capacity);
    puts_(" ro=");
    put_dec((uint64_t)b->ro);
    puts_(" serial=");
    if (id_st == 0) {
        for (int i = 0; i < 20 && id[i]; i++) putc_(id[i] >= 0x20 && id[i] < 0x7f ? (char)id[i] : '?');
    } else {
        put_status("!status=", id_st);
    }
    putc_('\n');

    blk_line(b);
    puts_(" config driver_features=");
    put_hex(b->features);
    puts_(" queue_num_max=");
    put_dec(blk_r(b, VM_QUEUE_NUM_MAX));
    puts_(" seg_max=");
    put_dec(cfg32(b, 0x0c));
    puts_(" blk_size=");
    put_dec(cfg32(b, 0x14));
    puts_(" max_discard_sectors=");
    put_dec(cfg32(b, 0x24));
    puts_(" max_discard_seg=");
    put_dec(cfg32(b, 0x28));
    puts_(" discard_sector_alignment=");
    put_dec(cfg32(b, 0x2c));
    puts_(" max_write_zeroes_sectors=");
    put_dec(cfg32(b, 0x30));
    puts_(" max_write_zeroes_seg=");
    put_dec(cfg32(b, 0x34));
    puts_(" write_zeroes_may_unmap=");
    put_dec(cfg8(b, 0x38));
    puts_(" vendor=");
    put_hex(blk_r(b, VM_VENDOR_ID));
    putc_('\n');

    blk_line(b);
    put_status(" get_id=", id_st);
    puts_(" get_id_len=");
    put_dec(id_len);
    puts_(" isr=");
    put_hex(isr);
    puts_(" isr_after_ack=");
    put_hex(isr_after);
    putc_('\n');
    if (id_st < 0) goto timeout;

    static const uint32_t even[2] = {1024, 3584}, odd[2] = {100, 4000};
    uint64_t fnv, fnv_odd;
    int rd = blk_read_scattered(b, even, &fnv);
    uint32_t rd_len = b->last_len;
    if (rd < 0) goto timeout;
    int rd_odd = blk_read_scattered(b, odd, &fnv_odd);
    if (rd_odd < 0) goto timeout;
    blk_line(b);
    put_status(" read=", rd);
    puts_(" read_len=");
    put_dec(rd_len);
    puts_(" fnv=");
    put_hex(fnv);
    put_status(" read_odd=", rd_odd);
    puts_(" fnv_odd=");
    put_hex(fnv_odd);
    putc_('\n');

    int past = blk_rw(b, BLK_T_IN, b->capacity, blk_buf, 512);
    int straddle = b->capacity ? blk_rw(b, BLK_T_IN, b->capacity - 1, blk_buf, 1024) : 0;
    int last = b->capacity ? blk_rw(b, BLK_T_IN, b->capacity - 1, blk_buf, 512) : 0;
    blk_line(b);
    put_status(" past_end=", past);
    put_status(" straddle=", straddle);
    put_status(" last_sector=", last);
    putc_('\n');
    if (past < 0 || straddle < 0 || last < 0) goto timeout;

    if (!b->ro) {
        uint8_t *w = blk_buf, *r = blk_buf + 0x10000;
        for (uint32_t s = 8; s < 16; s++)
            for (uint32_t i = 0; i < 512; i++) w[(s - 8) * 512 + i] = pattern(s, i);
        struct seg ws[2] = {{(uint64_t)(uintptr_t)w, 1536, 0}, {(uint64_t)(uintptr_t)(w + 1536), 2560, 0}};
        int wr = blk_do(b, BLK_T_OUT, 8, ws, 2);
        uint32_t wr_len = b->last_len;
        int fl = blk_do(b, BLK_T_FLUSH, 0, 0, 0);
        for (uint32_t i = 0; i < 4096; i++) r[i] = 0x5a;
        int rb = blk_rw(b, BLK_T_IN, 8, r, 4096);
        int same = rb == 0;
        for (uint32_t i = 0; i < 4096; i++) if (r[i] != w[i]) same = 0;
        int wz = (b->features & F_BLK_WRITE_ZEROES) ? blk_range_req(b, BLK_T_WRITE_ZEROES, 16, 8, 0) : -2;
        int dc = (b->features & F_BLK_DISCARD) ? blk_range_req(b, BLK_T_DISCARD, 24, 8, 0) : -2;
        for (uint32_t i = 0; i < 4096; i++) r[i] = 0x5a;
        int zr = blk_rw(b, BLK_T_IN, 16, r, 4096);
        int zeroes = zr == 0;
        for (uint32_t i = 0; i < 4096; i++) if (r[i]) zeroes = 0;
        blk_line(b);
        put_status(" write=", wr);
        put_status(" flush=", fl);
        puts_(" readback=");
        puts_(same ? "ok" : "bad");
        if (wz == -2) puts_(" write_zeroes=none"); else put_status(" write_zeroes=", wz);
        if (dc == -2) puts_(" discard=none"); else put_status(" discard=", dc);
        putc_('\n');
        blk_line(b);
        puts_(" write_len=");
        put_dec(wr_len);
        puts_(" zeroes_readback=");
        puts_(zeroes ? "ok" : "bad");
        putc_('\n');
        if (wr < 0 || fl < 0 || rb < 0 || wz == -1 || dc == -1 || zr < 0) goto timeout;
    } else {
        for (uint32_t i = 0; i < 512; i++) blk_buf[i] = 0xee;
        int wr = blk_rw(b, BLK_T_OUT, 8, blk_buf, 512);
        int wz = blk_range_req(b, BLK_T_WRITE_ZEROES, 8, 1, 0);
        int dc = blk_range_req(b, BLK_T_DISCARD, 8, 1, 0);
        int fl = blk_do(b, BLK_T_FLUSH, 0, 0, 0);
        blk_line(b);
        put_status(" ro_write=", wr);
        put_status(" ro_write_zeroes=", wz);
        put_status(" ro_discard=", dc);
        put_status(" flush=", fl);
        putc_('\n');
        if (wr < 0 || wz < 0 || dc < 0 || fl < 0) goto timeout;
    }
    blk_reset(b);
    blk_line(b);
    puts_(" ok\n");
    return;
timeout:
    blk_line(b);
    puts_(" timeout status=");
    put_hex(blk_r(b, VM_STATUS));
    puts_(" used_idx=");
    put_dec(VQ_USED[1]);
    puts_(" avail_idx=");
    put_dec(b->avail_idx);
    putc_('\n');
    blk_reset(b);
}

/* ---- probe.blk=bad: hostile requests on the first device ------------------------------- */

struct rawdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };

/* Waits for a used element for up to `ms` milliseconds, giving up early (after a short grace)
 * once the device says it needs a reset. Returns whether one came. */
static int bad_wait(struct blk *b, uint64_t ms) {
    uint64_t end = deadline_ms(ms), grace = 0;
    for (;;) {
        if (VQ_USED[1] != b->used_idx) return blk_reap(b, 1) == 0;
        uint64_t now = rdtsc();
        if (now > end || (grace && now > grace)) return 0;
        if (!grace && (blk_r(b, VM_STATUS) & S_NEEDS_RESET)) grace = deadline_ms(50);
        __asm__ volatile("pause");
    }
}

static void bad_report(struct blk *b, const char *name, int used, uint32_t over) {
    uint32_t isr = blk_r(b, VM_INTERRUPT_STATUS);
    puts_("PROBE: blk bad ");
    puts_(name);
    puts_(" status=");
    put_dec(*(volatile uint8_t *)&blk_slots[0].status);
    puts_(" used=");
    put_dec((uint64_t)used);
    puts_(" len=");
    put_dec(used ? b->last_len : 0);
    puts_(" dev_status=");
    put_hex(blk_r(b, VM_STATUS));
    puts_(" isr=");
    put_hex(isr);
    puts_(" over=");
    put_dec(over);
    putc_('\n');
    blk_w(b, VM_INTERRUPT_ACK, isr);
}

/* Re-initialises the device; reports and returns nonzero if it does not come back. */
static int bad_reinit(struct blk *b, const char *after) {
    const char *why = blk_init(b);
    if (!why) return 0;
    puts_("PROBE: blk bad reinit_failed after=");
    puts_(after);
    puts_(" why=");
    puts_(why);
    puts_(" dev_status=");
    put_hex(blk_r(b, VM_STATUS));
    putc_('\n');
    return 1;
}

/* One hostile chain at descriptors 0..n-1 with the header in slot 0; `type`/`sector` fill the
 * header and `extra` lets a case bump the avail index further. */
static void bad_chain(struct blk *b, const char *name, uint32_t type, uint64_t sector, const struct rawdesc *d, int n,
                      uint16_t extra) {
    struct blk_slot *s = &blk_slots[0];
    s->hdr.type = type;
    s->hdr.reserved = 0;
    s->hdr.sector = sector;
    *(volatile uint8_t *)&s->status = 0xff;
    for (int i = 0; i < n; i++) {
        VQ_DESC[i].addr = d[i].addr;
        VQ_DESC[i].len = d[i].len;
        VQ_DESC[i].flags = d[i].flags;
        VQ_DESC[i].next = d[i].next;
    }
    /* What of blk_buf's first page the chain lets the device write; the rest must stay. */
    uint32_t writable = 0;
    for (int i = 0; i < n; i++)
        if (d[i].addr == (uint64_t)(uintptr_t)blk_buf && (d[i].flags & VRING_DESC_F_WRITE))
            writable = d[i].len < 4096 ? d[i].len : 4096;
    for (uint32_t i = 0; i < 4096; i++) ((volatile uint8_t *)blk_buf)[i] = 0xa5;
    barrier();
    VQ_AVAIL[2 + (b->avail_idx & (b->qsize - 1))] = 0;
    barrier();
    b->avail_idx = (uint16_t)(b->avail_idx + 1 + extra);
    VQ_AVAIL[1] = b->avail_idx;
    blk_notify(b);
    int used = bad_wait(b, 1000);
    uint32_t over = 0;
    for (uint32_t i = writable; i < 4096; i++) over += ((volatile uint8_t *)blk_buf)[i] != 0xa5;
    bad_report(b, name, used, over);
}

static void blk_bad(struct blk *b) {
    const char *why = blk_init(b);
    if (why) {
        puts_("PROBE: blk bad failed init=");
        puts_(why);
        putc_('\n');
        return;
    }
    uint64_t hdr = (uint64_t)(uintptr_t)&blk_slots[0].hdr, st = (uint64_t)(uintptr_t)&blk_slots[0].status;
    uint64_t buf = (uint64_t)(uintptr_t)blk_buf;
    static struct blk_range range __attribute__((aligned(16)));
    uint64_t rng = (uint64_t)(uintptr_t)&range;
    const uint16_t N = VRING_DESC_F_NEXT, W = VRING_DESC_F_WRITE;
    const uint64_t far = 0x7f0000000000ull;
    struct { const char *name; uint32_t type; uint64_t sector; int n; struct rawdesc d[3]; } cases[] = {
        /* data outside guest RAM */
        {"data_outside_ram", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {far, 512, N | W, 2}, {st, 1, W, 0}}},
        /* data in the MMIO gap, where the exit device lives: not RAM either */
        {"data_in_mmio_gap", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {0xd0000000ull, 512, N | W, 2}, {st, 1, W, 0}}},
        /* the data descriptor's next is itself */
        {"loop", BLK_T_IN, 0, 2, {{hdr, 16, N, 1}, {buf, 512, N | W, 1}, {0, 0, 0, 0}}},
        /* next beyond the queue */
        {"next_out_of_range", BLK_T_IN, 0, 2, {{hdr, 16, N, 1}, {buf, 512, N | W, 4000}, {0, 0, 0, 0}}},
        /* a header of 8 bytes */
        {"short_header", BLK_T_IN, 0, 3, {{hdr, 8, N, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}}},
        /* the header alone: no status byte to write */
        {"header_only", BLK_T_IN, 0, 1, {{hdr, 16, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}}},
        /* the header device-writable */
        {"header_writable", BLK_T_IN, 0, 3, {{hdr, 16, N | W, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}}},
        /* the status byte device-readable */
        {"status_readonly", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 1, 0, 0}}},
        /* a read into a device-readable buffer */
        {"in_readonly_data", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N, 2}, {st, 1, W, 0}}},
        /* a write from a device-writable buffer */
        {"out_writable_data", BLK_T_OUT, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}}},
        /* 4 GiB - 1 of data: the chain is longer than 2^32 bytes, which no driver may post */
        {"huge_len", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 0xffffffffu, N | W, 2}, {st, 1, W, 0}}},
        /* 4 GiB - 512 of data, a whole number of sectors, the chain under 2^32 bytes */
        {"huge_len_sectors", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 0xfffffe00u, N | W, 2}, {st, 1, W, 0}}},
        /* a length that is no multiple of 512 */
        {"odd_len", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 100, N | W, 2}, {st, 1, W, 0}}},
        /* sector * 512 overflows 64 bits to 0 */
        {"sector_overflow", BLK_T_IN, 1ull << 55, 3, {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}}},
        /* a request type nobody knows, with a device-readable or a device-writable buffer */
        {"unknown_type", 0x1234, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N, 2}, {st, 1, W, 0}}},
        {"unknown_type_writable_data", 0x1234, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}}},
        /* a zero-length status descriptor */
        {"status_len0", BLK_T_IN, 0, 3, {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 0, W, 0}}},
        /* GET_ID into 4 bytes */
        {"get_id_short", BLK_T_GET_ID, 0, 3, {{hdr, 16, N, 1}, {buf, 4, N | W, 2}, {st, 1, W, 0}}},
    };
    for (uint32_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bad_chain(b, cases[i].name, cases[i].type, cases[i].sector, cases[i].d, cases[i].n, 0);
        if (bad_reinit(b, cases[i].name)) return;
    }

    /* discard/write-zeroes with bad ranges (writable disks) */
    struct { const char *name; uint32_t type; uint64_t sector; uint32_t num, flags; } ranges[] = {
        {"discard_past_end", BLK_T_DISCARD, b->capacity - 1, 100, 0},
        {"discard_unmap_flag", BLK_T_DISCARD, 0, 1, 1},
        {"write_zeroes_unknown_flag", BLK_T_WRITE_ZEROES, 0, 1, 2},
        {"write_zeroes_past_end", BLK_T_WRITE_ZEROES, b->capacity, 1, 0},
        {"discard_overflow", BLK_T_DISCARD, 0xffffffffffffff00ull, 0x200, 0},
    };
    for (uint32_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        range.sector = ranges[i].sector;
        range.num = ranges[i].num;
        range.flags = ranges[i].flags;
        struct rawdesc d[3] = {{hdr, 16, N, 1}, {rng, sizeof(range), N, 2}, {st, 1, W, 0}};
        bad_chain(b, ranges[i].name, ranges[i].type, 0, d, 3, 0);
        if (bad_reinit(b, ranges[i].name)) return;
    }
    {   /* a discard segment array that is not a multiple of 16 bytes */
        range.sector = 0;
        range.num = 1;
        range.flags = 0;
        struct rawdesc d[3] = {{hdr, 16, N, 1}, {rng, 10, N, 2}, {st, 1, W, 0}};
        bad_chain(b, "discard_short_segment", BLK_T_DISCARD, 0, d, 3, 0);
        if (bad_reinit(b, "discard_short_segment")) return;
    }

    {   /* the avail index jumps far beyond the queue size */
        struct rawdesc d[3] = {{hdr, 16, N, 1}, {buf, 512, N | W, 2}, {st, 1, W, 0}};
        bad_chain(b, "avail_jump", BLK_T_IN, 0, d, 3, 1000);
        if (bad_reinit(b, "avail_jump")) return;
    }
    {   /* the avail ring names a head beyond the queue */
        *(volatile uint8_t *)&blk_slots[0].status = 0xff;
        VQ_AVAIL[2 + (b->avail_idx & (b->qsize - 1))] = 1000;
        barrier();
        VQ_AVAIL[1] = ++b->avail_idx;
        blk_notify(b);
        bad_report(b, "avail_head_out_of_range", bad_wait(b, 1000), 0);
        if (bad_reinit(b, "avail_head_out_of_range")) return;
    }
    {   /* notifications of queues that do not exist: ignored, the device goes on */
        blk_w(b, VM_QUEUE_NOTIFY, 5);
        blk_w(b, VM_QUEUE_NOTIFY, 0xffffffffu);
        int r = blk_rw(b, BLK_T_IN, 0, blk_buf, 512);
        puts_("PROBE: blk bad notify_bad_queue read=");
        put_status("", r);
        puts_(" dev_status=");
        put_hex(blk_r(b, VM_STATUS));
        putc_('\n');
        if (r < 0 && bad_reinit(b, "notify_bad_queue")) return;
    }
    {   /* queue set-ups the device must not start with */
        uint64_t q0 = (uint64_t)(uintptr_t)vq_mem[0], q1 = (uint64_t)(uintptr_t)vq_mem[1], q2 = (uint64_t)(uintptr_t)vq_mem[2];
        struct { const char *name; uint32_t num; uint64_t desc, drv, dev; } qs[] = {
            {"queue_too_big", 300, q0, q1, q2},
            {"queue_not_pow2", 100, q0, q1, q2},
            {"queue_size0", 0, q0, q1, q2},
            {"queue_desc_outside_ram", QNUM_DEFAULT, far, q1, q2},
            {"queue_used_outside_ram", QNUM_DEFAULT, q0, q1, far},
            {"queue_avail_in_mmio_gap", QNUM_DEFAULT, q0, 0xfee00000ull, q2},
            {"queue_desc_misaligned", QNUM_DEFAULT, q0 + 3, q1, q2},
        };
        for (uint32_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
            uint32_t s = blk_setup(b, qs[i].num, qs[i].desc, qs[i].drv, qs[i].dev, &why);
            uint32_t isr = blk_r(b, VM_INTERRUPT_STATUS);
            puts_("PROBE: blk bad ");
            puts_(qs[i].name);
            puts_(" dev_status=");
            put_hex(why ? 0xdead : s);
            puts_(" isr=");
            put_hex(isr);
            putc_('\n');
            blk_w(b, VM_INTERRUPT_ACK, isr);
            if (bad_reinit(b, qs[i].name)) return;
        }
    }
    {   /* features the device did not offer: FEATURES_OK must not stick */
        blk_reset(b);
        blk_w(b, VM_STATUS, S_ACKNOWLEDGE);
        blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        blk_w(b, VM_DRIVER_FEATURES_SEL, 0);
        blk_w(b, VM_DRIVER_FEATURES, 1u << 31);
        blk_w(b, VM_DRIVER_FEATURES_SEL, 1);
        blk_w(b, VM_DRIVER_FEATURES, 1u | (1u << 30));
        blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        uint32_t s1 = blk_r(b, VM_STATUS);
        /* and DRIVER_OK without FEATURES_OK */
        blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK);
        uint32_t s2 = blk_r(b, VM_STATUS);
        puts_("PROBE: blk bad features_unoffered dev_status=");
        put_hex(s1);
        puts_(" driver_ok_without_features_ok=");
        put_hex(s2);
        putc_('\n');
        if (bad_reinit(b, "features_unoffered")) return;
    }

    static const uint32_t even[2] = {1024, 3584};
    uint64_t fnv;
    int r = blk_read_scattered(b, even, &fnv);
    puts_("PROBE: blk bad survived read=");
    put_status("", r);
    puts_(" fnv=");
    put_hex(fnv);
    puts_(" dev_status=");
    put_hex(blk_r(b, VM_STATUS));
    putc_('\n');
    blk_reset(b);
}

/* probe.blk=flood: the most work a guest can ask for, for ever. One chain of BLK_MAX_SEGS
 * reads that all alias blk_buf and together cover the disk (up to the device's size_max
 * per segment), offered in every ring slot and offered again as soon as it is used, with a
 * notification each round: the device always has a full queue of the largest requests. */
static void blk_flood(struct blk *b) {
    const char *why = blk_init(b);
    if (why) {
        puts_("PROBE: blk flood failed init=");
        puts_(why);
        putc_('\n');
        return;
    }
    uint32_t size_max = cfg32(b, 0x08), seg = BLK_BUF_SIZE;
    if (size_max && size_max < seg) seg = size_max;
    uint64_t per = b->capacity * 512 / BLK_MAX_SEGS;
    if (per < seg) seg = (uint32_t)per & ~511u;
    if (!seg) seg = 512;
    struct seg segs[BLK_MAX_SEGS];
    for (int i = 0; i < BLK_MAX_SEGS; i++) segs[i] = (struct seg){(uint64_t)(uintptr_t)blk_buf, seg, VRING_DESC_F_WRITE};
    blk_chain(b, 0, BLK_T_IN, segs, BLK_MAX_SEGS);
    blk_slots[0].hdr.sector = 0;
    puts_("PROBE: blk flood running segment=");
    put_dec(seg);
    putc_('\n');
    for (;;) {
        uint16_t want = (uint16_t)(VQ_USED[1] + b->qsize);
        while (b->avail_idx != want) VQ_AVAIL[2 + (b->avail_idx++ & (b->qsize - 1))] = 0;
        barrier();
        VQ_AVAIL[1] = b->avail_idx;
        blk_notify(b);
        __asm__ volatile("pause");
    }
}

static void blk_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    struct vloc v[VIRTIO_MAX_DEVS];
    const char *source;
    int n = virtio_devices(cmdline, rsdp_hint, v, &source);
    const uint8_t *dsdt = acpi_dsdt(acpi_rsdp(rsdp_hint));
    if (dsdt) {
        puts_("PROBE: dsdt com1=");
        put_dec((uint64_t)dsdt_has_eisaid(dsdt, 0x0105d041u)); /* PNP0501 */
        puts_(" i8042=");
        put_dec((uint64_t)dsdt_has_eisaid(dsdt, 0x0303d041u)); /* PNP0303 */
        putc_('\n');
    }
    list_virtio(v, n, source);
    if (word_is(mode, "list")) return;
    for (int i = 0; i < n; i++) {
        if (mmio_read32(v[i].base + VM_DEVICE_ID) != 2) continue;
        struct blk b = {0};
        b.n = i;
        b.base = v[i].base;
        if (word_is(mode, "bad")) { blk_bad(&b); return; }
        if (word_is(mode, "flood")) { blk_flood(&b); return; }
        blk_test(&b);
    }
    if (word_is(mode, "bad")) puts_("PROBE: blk bad failed no-device\n");
}

/* probe.bench=blkread|blkwrite|blkrand|blkid probe.n=N [probe.bs=BYTES] [probe.qd=N]
 * [probe.dev=I] [probe.transport=pci] [probe.nointr=1]: N requests of BS bytes (default 4096)
 * on virtio-blk device I (default the first), sequential and wrapping at the capacity, or at
 * random BS-aligned places; up to QD (default 1, at most 64) in flight. blkid sends GET_ID
 * requests (20 bytes, no disk I/O): the cost of the round trip alone. The device is virtio-mmio
 * unless probe.transport=pci: then the first virtio-blk PCI function (pci.c's pci_blk_find,
 * which assigns unassigned BARs itself), MSI-X enabled with no vector for the queue or the
 * configuration, as Linux sets up a polled queue. probe.nointr=1 also sets
 * VIRTQ_AVAIL_F_NO_INTERRUPT (as Linux's polled queues do), on either transport. */
static void bench_blk(const char *cmdline, uint64_t rsdp_hint, const char *kind, const char *name, uint64_t n) {
    struct vloc v[VIRTIO_MAX_DEVS];
    const char *source, *tsrc;
    int pci = word_is(cmdline_arg(cmdline, "probe.transport"), "pci");
    int count = pci ? 0 : virtio_devices(cmdline, rsdp_hint, v, &source);
    uint64_t khz = tsc_khz(&tsrc);
    puts_("PROBE: tsc khz=");
    put_dec(khz);
    puts_(" source=");
    puts_(tsrc);
    putc_('\n');
    const char *devarg = cmdline_arg(cmdline, "probe.dev");
    int devi = devarg ? (int)parse_dec(devarg) : 0;
    const char *bsarg = cmdline_arg(cmdline, "probe.bs"), *qdarg = cmdline_arg(cmdline, "probe.qd");
    uint64_t bs = bsarg ? parse_dec(bsarg) : 4096, qd = qdarg ? parse_dec(qdarg) : 1;
    const char *err = 0;
    struct blk b = {0};
    if (pci) {
        int idx = pci_blk_find(rsdp_hint, devi, &b.ops, &b.ctx, &err);
        if (!err) b.n = idx;
    } else if (devi >= count || mmio_read32(v[devi].base + VM_DEVICE_ID) != 2) err = "no-device";
    if (!err && (bs == 0 || bs % 512 || bs > BLK_BUF_SIZE)) err = "bad-bs";
    if (!err) {
        if (!pci) b.base = v[devi].base;
        err = blk_init(&b);
    }
    uint64_t spr = bs / 512;
    if (!err && (b.capacity < spr || (word_is(kind, "blkwrite") && b.ro))) err = b.ro ? "read-only" : "disk-too-small";
    if (err) {
        puts_("PROBE: bench ");
        puts_(name);
        puts_(" failed ");
        puts_(err);
        putc_('\n');
        if (b.base || b.ops) blk_reset(&b);
        return;
    }
    if (word_is(cmdline_arg(cmdline, "probe.nointr"), "1")) VQ_AVAIL[0] = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT */
    /* Segments of at most 64 KiB, fewer and larger if the device allows fewer. */
    uint32_t max_segs = BLK_MAX_SEGS;
    if (b.seg_max && b.seg_max < max_segs) max_segs = b.seg_max;
    uint64_t seg_len = 65536;
    while ((bs + seg_len - 1) / seg_len > max_segs) seg_len *= 2;
    if (qd < 1) qd = 1;
    /* More in flight than the usual layout's slots: slots of just the descriptors a request
     * of BS bytes needs (header, segments, status). */
    if (qd > b.slots) {
        b.dps = (uint32_t)((bs + seg_len - 1) / seg_len) + 2;
        b.slots = b.qsize / b.dps < BLK_SLOTS_MAX ? b.qsize / b.dps : BLK_SLOTS_MAX;
    }
    if (qd > b.slots) qd = b.slots;
    if (qd > BLK_BUF_SIZE / bs) qd = BLK_BUF_SIZE / bs;
    int write = word_is(kind, "blkwrite"), rnd = word_is(kind, "blkrand"), getid = word_is(kind, "blkid");
    uint32_t type = write ? BLK_T_OUT : getid ? BLK_T_GET_ID : BLK_T_IN;
    uint16_t dflag = write ? 0 : VRING_DESC_F_WRITE;
    if (write)
        for (uint64_t i = 0; i < qd * bs; i++) blk_buf[i] = (uint8_t)(i * 7);
    /* Each slot's chain once: its own part of blk_buf, in segments of at most seg_len. */
    for (uint32_t slot = 0; slot < qd; slot++) {
        struct seg segs[BLK_MAX_SEGS];
        int nseg = 0;
        for (uint64_t off = 0; off < bs; off += seg_len, nseg++) {
            segs[nseg].addr = (uint64_t)(uintptr_t)(blk_buf + slot * bs + off);
            segs[nseg].len = (uint32_t)(bs - off < seg_len ? bs - off : seg_len);
            segs[nseg].flags = dflag;
        }
        if (getid) {
            segs[0].len = 20;
            nseg = 1;
        }
        blk_chain(&b, slot, type, segs, nseg);
    }
    uint64_t next = 0, lcg = 0x2545f4914f6cdd1dull, slots_of = b.capacity / spr;
    uint64_t issued = 0, done = 0, errors = 0, waits = 0;
    uint32_t free_slots[BLK_SLOTS_MAX], nfree = 0;
    for (uint32_t i = (uint32_t)qd; i > 0; i--) free_slots[nfree++] = i - 1;
    int timed_out = 0;
    uint64_t t0 = rdtsc();
    for (;;) {
        /* Fill every free slot, then notify once for all of them. */
        int posted = 0;
        while (issued < n && nfree) {
            uint64_t sector;
            if (rnd) {
                lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
                sector = ((lcg >> 16) % slots_of) * spr;
            } else {
                if (next + spr > b.capacity) next = 0;
                sector = next;
                next += spr;
            }
            blk_submit(&b, free_slots[--nfree], sector);
            issued++;
            posted = 1;
        }
        if (posted) blk_notify(&b);
        if (done == n) break;
        /* Wait for one completion, then take every other one already there. */
        if (blk_reap(&b, BLK_TIMEOUT_MS)) { timed_out = 1; break; }
        waits++;
        do {
            uint32_t slot = b.last_id / b.dps;
            if (b.last_id % b.dps || slot >= qd) errors++; /* not a head we posted */
            else {
                if (*(volatile uint8_t *)&blk_slots[slot].status != 0) errors++;
                free_slots[nfree++] = slot;
            }
            done++;
        } while (VQ_USED[1] != b.used_idx && blk_reap(&b, 0) == 0);
    }
    uint64_t cycles = rdtsc() - t0;
    if (timed_out) {
        puts_("PROBE: bench ");
        puts_(name);
        puts_(" failed timeout done=");
        put_dec(done);
        putc_('\n');
        blk_reset(&b);
        return;
    }
    blk_reset(&b);
    puts_("PROBE: bench ");
    puts_(name);
    puts_(" n=");
    put_dec(n);
    puts_(" tsc=");
    put_dec(cycles);
    puts_(" bs=");
    put_dec(bs);
    puts_(" qd=");
    put_dec(qd);
    puts_(" errors=");
    put_dec(errors);
    puts_(" waits=");
    put_dec(waits);
    putc_('\n');
}

/* ---- A virtio-vsock driver: three split virtqueues, polled (virtio 1.2, 5.10) ------------ */

/* probe.vsock=info|test|bad and probe.bench=vsockrx|vsocktx drive the first device with
 * DeviceID 19 (features: VERSION_1 only). Everything is polled from one loop (vs_poll +
 * vs_service): the rx queue always holds one buffer of 44 + 4096 bytes per descriptor, each tx
 * packet takes a slot of two descriptors (header and payload in one, or in two), and control
 * packets wait in a small queue when no slot is free, so nothing blocks inside the packet
 * handler. Guest instructions are dear where the CPU is emulated (PVM): the data paths work
 * eight bytes at a time and send echoed data from where it already is.
 *
 * probe.vsock=test (ports are the host's, CID 2, unless "guest"):
 *   PROBE: vsock dev=N base=0x.. gsi=G features=0x.. cid=C driver_features=0x.. queue_num_max=M
 *          queues=RX,TX,EV source=dsdt|cmdline
 *   PROBE: vsock out port=5000 response=OP end=OP got=<the host's reply line>
 *          (REQUEST, "hello from the guest
" in two descriptors, a line back, SHUTDOWN: the
 *          host's RST or SHUTDOWN is `end`)
 *   PROBE: vsock refused port=5001 op=OP               (nobody listens: RST, 3)
 *   PROBE: vsock listening port=1234
 * then serves guest ports 1234 (echo: every byte + 1, buf_alloc 64 KiB, CREDIT_UPDATE every
 * 16 KiB consumed), 1237 (the same, but its credit only in the headers of its RW replies) and
 * 1235 (buf_alloc 4 KiB, nothing consumed until the host has been quiet for 500 ms, then
 * everything, with a CREDIT_UPDATE per packet), at most 8 connections at once, each reported
 * when the host shuts it down (answered with RST):
 *   PROBE: vsock echo|credit port=P peer=HOSTPORT max_over=N bytes=N fnv=0x.. end=OP flags=F
 *          unsent=N dropped=N updates=N credit_requests=N
 * (max_over: the most bytes the host had in flight beyond our window, which must stay 0), until
 * a connection to 1234 brings exactly "END\n": PROBE: vsock stats ..., PROBE: vsock done.
 * `PROBE: vsock timeout <where>` whenever an answer does not come in time (10 s; 120 s idle).
 *
 * probe.vsock=bad: hostile tx packets (see vs_bad), each reported as
 *   PROBE: vsock bad <case> reply=OP replies=N rst=N used=0|1 dev_status=0x.. [extras]
 * (reply: the op of the first packet back to the case's port, 0 if none), then the `out`
 * connection again and PROBE: vsock bad survived out=ok|failed dev_status=0x.. */

#define VSOCK_ID 19
#define VS_HDR 44
#define VS_MAXPAY 4096
#define VS_PKT (VS_HDR + VS_MAXPAY)
#define VS_QMAX 128            /* rx and tx queue sizes (or QueueNumMax if smaller) */
#define VS_EVQ 8
#define VS_RAW 4               /* the last tx descriptors: hand-made chains (probe.vsock=bad) */
#define VS_CONNS 8
#define VS_RING 65536          /* an echo connection's bytes not echoed yet */
#define VS_CTLQ 256
#define VS_HOST 2
#define VS_STREAM 1
#define VS_TIMEOUT_MS 10000
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

struct vs_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

/* A split virtqueue in the driver's memory. */
struct vq {
    volatile struct vring_desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[] */
    volatile uint16_t *used;  /* flags, idx, then {le32 id, le32 len}[] */
    uint32_t size;
    uint16_t avail_idx, used_idx;
};

static void vq_make_avail(struct vq *q, uint16_t head) {
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    barrier();
    q->avail[1] = ++q->avail_idx;
}

static int vq_take_used(struct vq *q, uint32_t *id, uint32_t *len) {
    if (q->used[1] == q->used_idx) return 0;
    barrier();
    volatile uint32_t *ring = (volatile uint32_t *)(q->used + 2);
    uint32_t i = q->used_idx & (q->size - 1);
    *id = ring[2 * i];
    *len = ring[2 * i + 1];
    q->used_idx++;
    return 1;
}

static uint8_t vs_qmem[3][3][4096] __attribute__((aligned(4096)));
static uint8_t vs_rxbuf[VS_QMAX][VS_PKT] __attribute__((aligned(64)));
static uint8_t vs_txbuf[VS_QMAX / 2][VS_PKT] __attribute__((aligned(64)));
static uint8_t vs_evbuf[VS_EVQ][8];
static uint8_t vs_pattern[VS_MAXPAY + 256]; /* byte i is i & 0xff: what vsocktx sends */
static uint8_t vs_rings[VS_CONNS][VS_RING];

enum { C_FREE, C_CONNECTING, C_OPEN, C_CLOSING, C_CLOSED };
enum { M_COLLECT, M_ECHO, M_ECHO_PIGGYBACK, M_HOLD, M_SINK };

struct vconn {
    int state, mode, released;
    uint32_t lport, pport;                         /* guest port, host port */
    uint32_t buf_alloc, fwd_cnt, fwd_adv, rx_cnt;  /* ours: fwd_adv is what the host was last told */
    uint32_t upd_adv;                              /* fwd_cnt in our last CREDIT_UPDATE */
    uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt; /* the host's, and what we sent */
    uint32_t end_op, end_flags;                    /* what closed it: RST or SHUTDOWN (flags) */
    uint64_t bytes, fnv, first_rx, last_rx, blocked;
    uint32_t max_over, dropped, credit_requests, updates;
    uint32_t rhead, rlen;                          /* echo: the ring's unsent bytes */
    uint8_t head[4];
    char line[128];
    uint32_t line_len;
};

struct vs {
    int n;
    uint64_t base, offered, features, cid;
    uint32_t gsi, rx_len, tx_slots, ntx_free, next_port;
    struct vq q[3];
    uint16_t tx_free[VS_QMAX / 2];
    int tx_kick, end, raw_busy;
    struct vs_hdr ctlq[VS_CTLQ];
    uint32_t ctl_head, ctl_n;
    uint64_t errors, stray, ctl_dropped, short_rx, rx_packets;
    uint32_t listen_port[4], listen_buf[4], nlisten;
    int listen_mode[4];
    /* probe.vsock=bad: packets to watch_port are only counted */
    uint32_t watch_port, w_count, w_rst, w_credit, w_first, w_buf_alloc, w_fwd_cnt;
};
static struct vs vs;
static struct vconn vconns[VS_CONNS];

static uint64_t ms_to_tsc(uint64_t ms) { return deadline_ms(ms) - rdtsc(); }

static void vs_notify(uint32_t q) {
    __asm__ volatile("mfence" ::: "memory");
    if (!(vs.q[q].used[0] & 1)) vw(vs.base, VM_QUEUE_NOTIFY, q); /* VRING_USED_F_NO_NOTIFY */
}

/* Sets up the device (found by vs_open) with rx buffers of `rx_len` bytes. */
static const char *vs_init(uint32_t rx_len) {
    const char *why = virtio_begin(vs.base, VSOCK_ID, F_VERSION_1, &vs.offered, &vs.features);
    if (why) return why;
    static const uint32_t want[3] = {VS_QMAX, VS_QMAX, VS_EVQ};
    for (uint32_t q = 0; q < 3; q++) {
        uint32_t max = virtio_queue_max(vs.base, q), num = want[q];
        if (!max) return "no-queue";
        while (num > max) num >>= 1;
        for (int p = 0; p < 3; p++)
            for (int i = 0; i < 4096; i++) ((volatile uint8_t *)vs_qmem[q][p])[i] = 0;
        vs.q[q].desc = (volatile struct vring_desc *)(uintptr_t)vs_qmem[q][0];
        vs.q[q].avail = (volatile uint16_t *)(uintptr_t)vs_qmem[q][1];
        vs.q[q].used = (volatile uint16_t *)(uintptr_t)vs_qmem[q][2];
        vs.q[q].size = num;
        vs.q[q].avail_idx = vs.q[q].used_idx = 0;
        why = virtio_queue(vs.base, q, num, (uint64_t)(uintptr_t)vs_qmem[q][0], (uint64_t)(uintptr_t)vs_qmem[q][1],
                           (uint64_t)(uintptr_t)vs_qmem[q][2]);
        if (why) return why;
    }
    if (vs.q[1].size < 4 + VS_RAW) return "tx-queue-too-small";
    vs.rx_len = rx_len;
    for (uint32_t i = 0; i < vs.q[0].size; i++) {
        vs.q[0].desc[i].addr = (uint64_t)(uintptr_t)vs_rxbuf[i];
        vs.q[0].desc[i].len = rx_len;
        vs.q[0].desc[i].flags = VRING_DESC_F_WRITE;
        vs.q[0].desc[i].next = 0;
        vq_make_avail(&vs.q[0], (uint16_t)i);
    }
    for (uint32_t i = 0; i < vs.q[2].size; i++) {
        vs.q[2].desc[i].addr = (uint64_t)(uintptr_t)vs_evbuf[i];
        vs.q[2].desc[i].len = 8;
        vs.q[2].desc[i].flags = VRING_DESC_F_WRITE;
        vs.q[2].desc[i].next = 0;
        vq_make_avail(&vs.q[2], (uint16_t)i);
    }
    vs.tx_slots = (vs.q[1].size - VS_RAW) / 2;
    for (uint32_t i = 0; i < vs.tx_slots; i++) vs.tx_free[i] = (uint16_t)(vs.tx_slots - 1 - i);
    vs.ntx_free = vs.tx_slots;
    vs.ctl_n = vs.ctl_head = 0;
    vs.tx_kick = vs.raw_busy = 0;
    vw(vs.base, VM_STATUS, S_LIVE);
    if (vr(vs.base, VM_STATUS) != S_LIVE) return "driver-ok-refused";
    vs.cid = cfg64(vs.base, 0);
    vs_notify(0);
    vs_notify(2);
    return 0;
}

/* Finds the first vsock device and sets it up; returns 0 or why not. */
static const char *vs_open(const char *cmdline, uint64_t rsdp_hint, const char **source) {
    struct vloc v[VIRTIO_MAX_DEVS];
    int n = virtio_devices(cmdline, rsdp_hint, v, source);
    memset(&vs, 0, sizeof(vs));
    memset(vconns, 0, sizeof(vconns));
    vs.n = -1;
    for (int i = 0; i < n && vs.n < 0; i++)
        if (mmio_read32(v[i].base + VM_DEVICE_ID) == VSOCK_ID) {
            vs.n = i;
            vs.base = v[i].base;
            vs.gsi = v[i].gsi;
        }
    if (vs.n < 0) return "no-device";
    vs.next_port = 49152;
    for (uint32_t i = 0; i < sizeof(vs_pattern); i++) vs_pattern[i] = (uint8_t)i;
    return vs_init(VS_PKT);
}

static void vs_fill(struct vs_hdr *h, uint32_t lport, uint32_t pport, uint16_t op, uint32_t flags, uint32_t len,
                    uint32_t buf_alloc, uint32_t fwd_cnt) {
    h->src_cid = vs.cid;
    h->dst_cid = VS_HOST;
    h->src_port = lport;
    h->dst_port = pport;
    h->len = len;
    h->type = VS_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = buf_alloc;
    h->fwd_cnt = fwd_cnt;
}

/* Makes tx slot `slot` available: its header at the start of its buffer and `len` bytes of
 * payload at `payload`, in one descriptor (payload right after the header, !split) or two. */
static void vs_post(uint32_t slot, const uint8_t *payload, uint32_t len, int split) {
    volatile struct vring_desc *d = &vs.q[1].desc[2 * slot];
    uint8_t *b = vs_txbuf[slot];
    d[0].addr = (uint64_t)(uintptr_t)b;
    if (len && (split || payload != b + VS_HDR)) {
        d[0].len = VS_HDR;
        d[0].flags = VRING_DESC_F_NEXT;
        d[0].next = (uint16_t)(2 * slot + 1);
        d[1].addr = (uint64_t)(uintptr_t)payload;
        d[1].len = len;
        d[1].flags = 0;
        d[1].next = 0;
    } else {
        d[0].len = VS_HDR + len;
        d[0].flags = 0;
        d[0].next = 0;
    }
    vq_make_avail(&vs.q[1], (uint16_t)(2 * slot));
    vs.tx_kick = 1;
}

/* Sends a header-only packet now, or queues it until a tx slot is free. */
static void vs_ctl(uint32_t lport, uint32_t pport, uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt) {
    struct vs_hdr h;
    vs_fill(&h, lport, pport, op, flags, 0, buf_alloc, fwd_cnt);
    if (vs.ntx_free && !vs.ctl_n) {
        uint32_t slot = vs.tx_free[--vs.ntx_free];
        memcpy(vs_txbuf[slot], &h, VS_HDR);
        vs_post(slot, 0, 0, 0);
    } else if (vs.ctl_n == VS_CTLQ) {
        vs.ctl_dropped++;
    } else {
        memcpy(&vs.ctlq[(vs.ctl_head + vs.ctl_n++) % VS_CTLQ], &h, VS_HDR);
    }
}

static void vs_ctl_flush(void) {
    while (vs.ctl_n && vs.ntx_free) {
        uint32_t slot = vs.tx_free[--vs.ntx_free];
        memcpy(vs_txbuf[slot], &vs.ctlq[vs.ctl_head], VS_HDR);
        vs.ctl_head = (vs.ctl_head + 1) % VS_CTLQ;
        vs.ctl_n--;
        vs_post(slot, 0, 0, 0);
    }
}

/* Whether a data packet can go now (after every queued control packet). */
static int vs_can_send(void) { return vs.ntx_free && !vs.ctl_n; }

static void vs_conn_ctl(struct vconn *c, uint16_t op, uint32_t flags) {
    c->fwd_adv = c->fwd_cnt;
    if (op == OP_CREDIT_UPDATE) {
        c->updates++;
        c->upd_adv = c->fwd_cnt;
    }
    vs_ctl(c->lport, c->pport, op, flags, c->buf_alloc, c->fwd_cnt);
}

/* Bytes the host can still take on `c` (negative: we went beyond its credit). */
static int64_t vs_credit(const struct vconn *c) {
    return (int64_t)c->peer_buf_alloc - (int64_t)(uint32_t)(c->tx_cnt - c->peer_fwd_cnt);
}

/* One RW packet of `len` bytes from `src`: copied right after the header in the slot when
 * `copy` (then one descriptor unless `split`), else sent from where it is (two descriptors).
 * The caller checked vs_can_send(). */
static void vs_conn_rw(struct vconn *c, const uint8_t *src, uint32_t len, int copy, int split) {
    uint32_t slot = vs.tx_free[--vs.ntx_free];
    uint8_t *b = vs_txbuf[slot];
    const uint8_t *payload = src;
    if (copy) {
        memcpy(b + VS_HDR, src, len);
        payload = b + VS_HDR;
    }
    c->fwd_adv = c->fwd_cnt;
    vs_fill((struct vs_hdr *)b, c->lport, c->pport, OP_RW, 0, len, c->buf_alloc, c->fwd_cnt);
    c->tx_cnt += len;
    vs_post(slot, payload, len, split);
}

static struct vconn *vs_find(uint32_t lport, uint32_t pport) {
    for (int i = 0; i < VS_CONNS; i++)
        if (vconns[i].state != C_FREE && vconns[i].lport == lport && vconns[i].pport == pport) return &vconns[i];
    return 0;
}

static struct vconn *vs_alloc(uint32_t lport, uint32_t pport, int mode, uint32_t buf_alloc) {
    for (int i = 0; i < VS_CONNS; i++) {
        struct vconn *c = &vconns[i];
        if (c->state != C_FREE) continue;
        memset(c, 0, sizeof(*c));
        c->state = C_CONNECTING;
        c->mode = mode;
        c->lport = lport;
        c->pport = pport;
        c->buf_alloc = buf_alloc;
        c->fnv = FNV_INIT;
        return c;
    }
    return 0;
}

/* d[i] = s[i] + 1, eight bytes at a time (no carry crosses a byte). */
static void plus_one(uint8_t *d, const uint8_t *s, uint32_t n) {
    for (; n >= 8; n -= 8, s += 8, d += 8) {
        uint64_t x = *(const u64u *)s;
        *(u64u *)d = ((x & 0x7f7f7f7f7f7f7f7full) + 0x0101010101010101ull) ^ (x & 0x8080808080808080ull);
    }
    for (; n; n--) *d++ = (uint8_t)(*s++ + 1);
}

/* RW payload for `c`: counted, hashed, and consumed now or kept as its mode says. */
static void vs_conn_data(struct vconn *c, const uint8_t *p, uint32_t n) {
    if (c->mode == M_HOLD || !c->bytes) c->last_rx = rdtsc();
    if (!c->bytes) c->first_rx = c->last_rx;
    for (uint32_t i = 0; i < n && c->bytes + i < 4; i++) c->head[c->bytes + i] = p[i];
    c->bytes += n;
    c->rx_cnt += n;
    uint32_t in_flight = c->rx_cnt - c->fwd_cnt;
    if (in_flight > c->buf_alloc && in_flight - c->buf_alloc > c->max_over) c->max_over = in_flight - c->buf_alloc;
    if (c->mode != M_SINK) c->fnv = fnv1a(c->fnv, p, n);
    if (c->mode == M_ECHO || c->mode == M_ECHO_PIGGYBACK) {
        uint8_t *ring = vs_rings[c - vconns];
        uint32_t take = VS_RING - c->rlen < n ? VS_RING - c->rlen : n;
        uint32_t at = (c->rhead + c->rlen) & (VS_RING - 1), first = VS_RING - at < take ? VS_RING - at : take;
        plus_one(ring + at, p, first);
        plus_one(ring, p + first, take - first);
        c->rlen += take;
        c->dropped += n - take; /* beyond our credit: counted as consumed, not kept */
        c->fwd_cnt += n - take;
        if (c->bytes == 4 && c->head[0] == 'E' && c->head[1] == 'N' && c->head[2] == 'D' && c->head[3] == '\n') vs.end = 1;
    } else if (c->mode == M_HOLD) {
        if (c->released) c->fwd_cnt = c->rx_cnt;
    } else {
        for (uint32_t i = 0; i < n && c->mode == M_COLLECT && c->line_len < sizeof(c->line) - 1; i++) c->line[c->line_len++] = (char)p[i];
        c->fwd_cnt = c->rx_cnt;
    }
}

static void vs_rx_packet(const uint8_t *b, uint32_t len) {
    struct vs_hdr h;
    memcpy(&h, b, VS_HDR);
    uint32_t plen = len - VS_HDR;
    vs.rx_packets++;
    if (h.len != plen) {
        vs.errors++;
        if (h.len < plen) plen = h.len;
    }
    if (vs.watch_port && h.dst_port == vs.watch_port) {
        if (!vs.w_count++) vs.w_first = h.op;
        vs.w_rst += h.op == OP_RST;
        vs.w_credit += h.op == OP_CREDIT_UPDATE;
        vs.w_buf_alloc = h.buf_alloc;
        vs.w_fwd_cnt = h.fwd_cnt;
        return;
    }
    if (h.dst_cid != vs.cid || h.src_cid != VS_HOST || h.type != VS_STREAM) { vs.stray++; return; }
    struct vconn *c = vs_find(h.dst_port, h.src_port);
    if (!c) {
        if (h.op == OP_REQUEST) {
            for (uint32_t i = 0; i < vs.nlisten; i++) {
                if (vs.listen_port[i] != h.dst_port) continue;
                c = vs_alloc(h.dst_port, h.src_port, vs.listen_mode[i], vs.listen_buf[i]);
                if (!c) break;
                c->state = C_OPEN;
                c->peer_buf_alloc = h.buf_alloc;
                c->peer_fwd_cnt = h.fwd_cnt;
                vs_conn_ctl(c, OP_RESPONSE, 0);
                return;
            }
        } else {
            vs.stray++;
        }
        if (h.op != OP_RST) vs_ctl(h.dst_port, h.src_port, OP_RST, 0, 0, 0); /* refused, or no such connection */
        return;
    }
    if (c->state == C_CLOSED) return;
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    switch (h.op) {
    case OP_RESPONSE:
        if (c->state == C_CONNECTING) c->state = C_OPEN;
        else vs.errors++;
        break;
    case OP_RST:
        c->state = C_CLOSED;
        c->end_op = OP_RST;
        break;
    case OP_SHUTDOWN:
        c->end_op = OP_SHUTDOWN;
        c->end_flags = h.flags;
        vs_conn_ctl(c, OP_RST, 0);
        c->state = C_CLOSED;
        break;
    case OP_RW:
        if (c->state == C_OPEN || c->state == C_CLOSING) vs_conn_data(c, b + VS_HDR, plen);
        else vs.errors++;
        break;
    case OP_CREDIT_REQUEST:
        vs_conn_ctl(c, OP_CREDIT_UPDATE, 0);
        break;
    case OP_CREDIT_UPDATE:
        break;
    default:
        vs.errors++;
    }
}

/* Takes what the device used: tx slots back, rx packets handled and their buffers given back.
 * Returns how many rx packets came. */
static int vs_poll(void) {
    uint32_t id, len, raw = vs.q[1].size - VS_RAW;
    int got = 0;
    while (vq_take_used(&vs.q[1], &id, &len)) {
        if (id == raw) vs.raw_busy = 0;
        else if (id % 2 || id / 2 >= vs.tx_slots || vs.ntx_free >= vs.tx_slots) vs.errors++;
        else vs.tx_free[vs.ntx_free++] = (uint16_t)(id / 2);
    }
    vs_ctl_flush();
    while (vq_take_used(&vs.q[0], &id, &len)) {
        got++;
        if (id >= vs.q[0].size) { vs.errors++; continue; }
        if (len > vs.rx_len) { vs.errors++; len = vs.rx_len; }
        if (len >= VS_HDR) vs_rx_packet(vs_rxbuf[id], len);
        else vs.short_rx++;
        vq_make_avail(&vs.q[0], (uint16_t)id);
    }
    if (got) vs_notify(0);
    vs_ctl_flush();
    if (vs.tx_kick) {
        vs.tx_kick = 0;
        vs_notify(1);
    }
    return got;
}

/* Between polls: echo what waits (within the host's credit, asking for credit after 100 ms
 * without), release held bytes once the host has been quiet for 500 ms, and tell the host
 * what was consumed (every RW header does; a CREDIT_UPDATE when nothing else will). */
static void vs_service(void) {
    uint64_t now = 0;
    for (int progress = 1; progress;) {
        progress = 0;
        for (int i = 0; i < VS_CONNS && vs_can_send(); i++) {
            struct vconn *c = &vconns[i];
            if (c->state != C_OPEN || (c->mode != M_ECHO && c->mode != M_ECHO_PIGGYBACK) || !c->rlen) continue;
            int64_t credit = vs_credit(c);
            if (credit <= 0) {
                if (!now) now = rdtsc();
                if (!c->blocked) c->blocked = now;
                else if (now - c->blocked > ms_to_tsc(100)) {
                    vs_conn_ctl(c, OP_CREDIT_REQUEST, 0);
                    c->credit_requests++;
                    c->blocked = now;
                }
                continue;
            }
            c->blocked = 0;
            uint32_t n = c->rlen < VS_MAXPAY ? c->rlen : VS_MAXPAY;
            if ((int64_t)n > credit) n = (uint32_t)credit;
            if (n > VS_RING - c->rhead) n = VS_RING - c->rhead;
            c->fwd_cnt += n;
            /* Small replies are copied after their header (one descriptor); larger ones go
             * from the ring (two): the host sends into that part of the ring again only
             * after the device took this packet, which carries the credit for it. */
            vs_conn_rw(c, vs_rings[i] + c->rhead, n, n <= 256, n > 256);
            c->rhead = (c->rhead + n) & (VS_RING - 1);
            c->rlen -= n;
            progress = 1;
        }
    }
    for (int i = 0; i < VS_CONNS; i++) {
        struct vconn *c = &vconns[i];
        if (c->state != C_OPEN) continue;
        if (c->mode == M_HOLD && !c->released && c->bytes) {
            if (!now) now = rdtsc();
            if (now - c->last_rx > ms_to_tsc(500)) {
                c->released = 1;
                c->fwd_cnt = c->rx_cnt;
            }
        }
        uint32_t unadv = c->fwd_cnt - c->fwd_adv;
        if (c->mode == M_ECHO) {
            /* the RW replies carry fwd_cnt too, but an explicit update every quarter window */
            if (c->fwd_cnt - c->upd_adv >= c->buf_alloc / 4) vs_conn_ctl(c, OP_CREDIT_UPDATE, 0);
        } else if (unadv && (unadv >= c->buf_alloc / 2 || (c->mode != M_SINK && c->fwd_cnt == c->rx_cnt))) {
            vs_conn_ctl(c, OP_CREDIT_UPDATE, 0);
        }
    }
}

static void vs_listen(uint32_t port, int mode, uint32_t buf_alloc) {
    vs.listen_port[vs.nlisten] = port;
    vs.listen_mode[vs.nlisten] = mode;
    vs.listen_buf[vs.nlisten++] = buf_alloc;
}

static void vs_timeout(const char *where) {
    puts_("PROBE: vsock timeout ");
    puts_(where);
    puts_(" dev_status=");
    put_hex(vr(vs.base, VM_STATUS));
    putc_('\n');
}

/* Polls until `*state` is no longer `from` (0) or `ms` milliseconds pass (-1). */
static int vs_wait_state(volatile int *state, int from, uint64_t ms) {
    uint64_t end = deadline_ms(ms);
    for (uint32_t spin = 1; *state == from; spin++) {
        vs_poll();
        vs_service();
        if (!(spin & 255) && rdtsc() > end) return -1;
        __asm__ volatile("pause");
    }
    return 0;
}

/* Polls for `ms` milliseconds. */
static void vs_idle(uint64_t ms) {
    int never = 0;
    vs_wait_state(&never, 0, ms);
}

static struct vconn *vs_connect(uint32_t port, int mode, uint32_t buf_alloc) {
    struct vconn *c = vs_alloc(vs.next_port++, port, mode, buf_alloc);
    if (c) vs_conn_ctl(c, OP_REQUEST, 0);
    return c;
}

/* Waits for a free tx slot (for data); returns 0, or -1 after `ms`. */
static int vs_wait_slot(uint64_t ms) {
    uint64_t end = deadline_ms(ms);
    for (uint32_t spin = 1; !vs_can_send(); spin++) {
        vs_poll();
        if (!(spin & 255) && rdtsc() > end) return -1;
        __asm__ volatile("pause");
    }
    return 0;
}

/* SHUTDOWN (both directions), then waits for the host's RST or SHUTDOWN; frees `c`. */
static void vs_close(struct vconn *c) {
    if (c->state == C_OPEN) {
        vs_conn_ctl(c, OP_SHUTDOWN, 3);
        c->state = C_CLOSING;
        if (vs_wait_state(&c->state, C_CLOSING, VS_TIMEOUT_MS)) vs_timeout("close");
    }
    c->state = C_FREE;
}

static void put_line(const char *s, uint32_t n) {
    for (uint32_t i = 0; i < n && s[i] != '\n'; i++) putc_(s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?');
}

/* A connection to the host's `port`: "hello from the guest\n" out (header and payload in two
 * descriptors), the host's reply line back, then SHUTDOWN. Returns whether all went well. */
static int vs_out(uint32_t port) {
    struct vconn *c = vs_connect(port, M_COLLECT, 65536);
    if (!c) { puts_("PROBE: vsock out failed no-connection-slot\n"); return 0; }
    uint32_t response = 0, end = 0;
    int ok = 0;
    if (vs_wait_state(&c->state, C_CONNECTING, VS_TIMEOUT_MS)) vs_timeout("out-response");
    else response = c->state == C_OPEN ? OP_RESPONSE : c->end_op;
    if (c->state == C_OPEN) {
        static const char hello[] = "hello from the guest\n";
        if (vs_wait_slot(VS_TIMEOUT_MS)) vs_timeout("out-send");
        else vs_conn_rw(c, (const uint8_t *)hello, sizeof(hello) - 1, 1, 1);
        uint64_t deadline = deadline_ms(VS_TIMEOUT_MS);
        for (uint32_t spin = 1; c->state == C_OPEN; spin++) {
            vs_poll();
            vs_service();
            int nl = 0;
            for (uint32_t i = 0; i < c->line_len; i++) nl |= c->line[i] == '\n';
            if (nl) break;
            if (!(spin & 255) && rdtsc() > deadline) { vs_timeout("out-reply"); break; }
        }
        ok = c->line_len > 0;
        vs_close(c);
        end = c->end_op;
    }
    c->state = C_FREE;
    puts_("PROBE: vsock out port=");
    put_dec(port);
    puts_(" response=");
    put_dec(response);
    puts_(" end=");
    put_dec(end);
    puts_(" got=");
    put_line(c->line, c->line_len);
    putc_('\n');
    return ok && response == OP_RESPONSE;
}

static void vs_stats(void) {
    puts_("PROBE: vsock stats errors=");
    put_dec(vs.errors);
    puts_(" stray=");
    put_dec(vs.stray);
    puts_(" short_rx=");
    put_dec(vs.short_rx);
    puts_(" ctl_dropped=");
    put_dec(vs.ctl_dropped);
    puts_(" rx_packets=");
    put_dec(vs.rx_packets);
    putc_('\n');
}

/* Reports and frees the connections that closed (echo and credit ones). */
static void vs_report_closed(void) {
    for (int i = 0; i < VS_CONNS; i++) {
        struct vconn *c = &vconns[i];
        if (c->state != C_CLOSED) continue;
        if (c->mode != M_COLLECT && c->mode != M_SINK) {
            puts_(c->mode == M_HOLD ? "PROBE: vsock credit port=" : "PROBE: vsock echo port=");
            put_dec(c->lport);
            puts_(" peer=");
            put_dec(c->pport);
            puts_(" max_over=");
            put_dec(c->max_over);
            puts_(" bytes=");
            put_dec(c->bytes);
            puts_(" fnv=");
            put_hex(c->fnv);
            puts_(" end=");
            put_dec(c->end_op);
            puts_(" flags=");
            put_dec(c->end_flags);
            puts_(" unsent=");
            put_dec(c->rlen);
            puts_(" dropped=");
            put_dec(c->dropped);
            puts_(" updates=");
            put_dec(c->updates);
            puts_(" credit_requests=");
            put_dec(c->credit_requests);
            putc_('\n');
        }
        c->state = C_FREE;
    }
}

/* probe.vsock=test */
static void vs_test(void) {
    vs_out(5000);
    struct vconn *c = vs_connect(5001, M_COLLECT, 65536);
    uint32_t op = 0;
    if (c && vs_wait_state(&c->state, C_CONNECTING, VS_TIMEOUT_MS)) vs_timeout("refused");
    else if (c) op = c->state == C_OPEN ? OP_RESPONSE : c->end_op;
    if (c && c->state == C_OPEN) vs_conn_ctl(c, OP_RST, 0);
    if (c) c->state = C_FREE;
    puts_("PROBE: vsock refused port=5001 op=");
    put_dec(op);
    putc_('\n');

    vs_listen(1234, M_ECHO, 65536);
    vs_listen(1235, M_HOLD, 4096);
    vs_listen(1237, M_ECHO_PIGGYBACK, 65536);
    puts_("PROBE: vsock listening port=1234\n");
    uint64_t idle = ms_to_tsc(120000), last = rdtsc();
    int active = 0;
    for (uint32_t spin = 1; !vs.end; spin++) {
        active |= vs_poll();
        vs_service();
        vs_report_closed();
        if (!(spin & 1023)) {
            uint64_t now = rdtsc();
            if (active) { last = now; active = 0; }
            else if (now - last > idle) { vs_timeout("serve"); break; }
        }
        __asm__ volatile("pause");
    }
    for (int i = 0; i < VS_CONNS; i++)
        if (vconns[i].state == C_OPEN) { vs_conn_ctl(&vconns[i], OP_RST, 0); vconns[i].state = C_FREE; }
    vs_idle(50);
    vs_stats();
    if (vs.end) puts_("PROBE: vsock done\n");
}

/* ---- probe.vsock=bad: hostile tx packets, then the device must still work ---------------- */

static uint8_t vs_raw[8192] __attribute__((aligned(64)));

static void vs_watch(uint32_t port) {
    vs.watch_port = port;
    vs.w_count = vs.w_rst = vs.w_credit = vs.w_first = 0;
}

/* Polls for up to `ms`, or until `want` packets came to the watched port (then 50 ms more). */
static void vs_watch_wait(uint64_t ms, uint32_t want) {
    uint64_t end = deadline_ms(ms);
    for (uint32_t spin = 1;; spin++) {
        vs_poll();
        if (!(spin & 255)) {
            if (rdtsc() > end) return;
            if (vs.w_count >= want) { vs_idle(50); return; }
        }
        __asm__ volatile("pause");
    }
}

/* Posts a hand-made chain at the tx descriptors kept for it (next fields relative to the
 * first) and waits up to 1 s for the device to use it; returns whether it did. */
static int vs_raw_chain(const struct rawdesc *d, int n) {
    uint32_t first = vs.q[1].size - VS_RAW;
    for (int i = 0; i < n; i++) {
        vs.q[1].desc[first + i].addr = d[i].addr;
        vs.q[1].desc[first + i].len = d[i].len;
        vs.q[1].desc[first + i].flags = d[i].flags;
        vs.q[1].desc[first + i].next = (uint16_t)(first + d[i].next);
    }
    vs.raw_busy = 1;
    vq_make_avail(&vs.q[1], (uint16_t)first);
    vs_notify(1);
    volatile int *busy = &vs.raw_busy;
    vs_wait_state(busy, 1, 1000);
    return !vs.raw_busy;
}

/* A packet with header `h` and `len` bytes at `payload` through an ordinary tx slot. */
static int vs_send_hdr(const struct vs_hdr *h, const uint8_t *payload, uint32_t len) {
    if (vs_wait_slot(1000)) return -1;
    uint32_t slot = vs.tx_free[--vs.ntx_free];
    memcpy(vs_txbuf[slot], h, VS_HDR);
    vs_post(slot, payload, len, 1);
    return 0;
}

static void vs_bad_line(const char *name, int used) {
    puts_("PROBE: vsock bad ");
    puts_(name);
    puts_(" reply=");
    put_dec(vs.w_first);
    puts_(" replies=");
    put_dec(vs.w_count);
    puts_(" rst=");
    put_dec(vs.w_rst);
    puts_(" used=");
    put_dec((uint64_t)used);
    puts_(" dev_status=");
    put_hex(vr(vs.base, VM_STATUS));
}

/* After a case: the device is set up again if it stopped (reported); nonzero if it fails. */
static int vs_bad_check(const char *name) {
    uint32_t s = vr(vs.base, VM_STATUS);
    if (s == S_LIVE) return 0;
    const char *why = vs_init(VS_PKT);
    puts_("PROBE: vsock bad reinit after=");
    puts_(name);
    puts_(" status=");
    put_hex(s);
    puts_(" why=");
    puts_(why ? why : "ok");
    putc_('\n');
    return why != 0;
}

/* One malformed packet in a hand-made chain from guest port `port`, then a RST with the same
 * addresses to clean up whatever the device made of it. */
static int vs_bad_simple(const char *name, uint32_t port, uint64_t src_cid, uint64_t dst_cid, uint32_t dport,
                         uint16_t type, uint16_t op, uint32_t len, uint32_t desc_len, uint16_t dflags) {
    struct vs_hdr *h = (struct vs_hdr *)vs_raw;
    vs_fill(h, port, dport, op, 0, len, 65536, 0);
    h->src_cid = src_cid;
    h->dst_cid = dst_cid;
    h->type = type;
    memcpy(vs_raw + VS_HDR, "hello", 5);
    struct rawdesc d = {(uint64_t)(uintptr_t)vs_raw, desc_len, dflags, 0};
    vs_watch(port);
    int used = vs_raw_chain(&d, 1);
    vs_watch_wait(300, 1);
    vs_bad_line(name, used);
    putc_('\n');
    struct vs_hdr rst = *h;
    rst.op = OP_RST;
    rst.len = 0;
    rst.type = VS_STREAM;
    vs_send_hdr(&rst, 0, 0);
    vs_idle(20);
    return vs_bad_check(name);
}

/* A connection by hand from `port` to the host's `dport`: the reply's op (RESPONSE: open). */
static uint32_t vs_bad_connect(uint32_t port, uint32_t dport) {
    struct vs_hdr h;
    vs_fill(&h, port, dport, OP_REQUEST, 0, 0, 65536, 0);
    vs_watch(port);
    vs_send_hdr(&h, 0, 0);
    vs_watch_wait(VS_TIMEOUT_MS, 1);
    uint32_t op = vs.w_first;
    vs_watch(port);
    return op;
}

static void vs_bad_rst(uint32_t port, uint32_t dport) {
    struct vs_hdr h;
    vs_fill(&h, port, dport, OP_RST, 0, 0, 0, 0);
    vs_send_hdr(&h, 0, 0);
    vs_idle(20);
}

/* probe.vsock=flood: packets the device drops at once (another guest's source CID) in every
 * transmit slot, offered again as soon as they are used, a notification each round; and
 * receive buffers shorter than a header offered again as fast as the device returns them.
 * The device never runs out of work on either queue. */
static void vs_flood(void) {
    struct vs_hdr *h = (struct vs_hdr *)vs_raw;
    vs_fill(h, 40000, 5000, OP_REQUEST, 0, 0, 65536, 0);
    h->src_cid = 99;
    struct vq *tx = &vs.q[1], *rx = &vs.q[0];
    tx->desc[0].addr = (uint64_t)(uintptr_t)vs_raw;
    tx->desc[0].len = VS_HDR;
    tx->desc[0].flags = 0;
    tx->desc[0].next = 0;
    for (uint32_t i = 0; i < rx->size; i++) rx->desc[i].len = 8; /* shorter than a header */
    puts_("PROBE: vsock flood running\n");
    for (;;) {
        uint16_t want = (uint16_t)(tx->used[1] + tx->size);
        while (tx->avail_idx != want) tx->avail[2 + (tx->avail_idx++ & (tx->size - 1))] = 0;
        uint16_t rx_want = (uint16_t)(rx->used[1] + rx->size);
        while (rx->avail_idx != rx_want) {
            rx->avail[2 + (rx->avail_idx & (rx->size - 1))] = (uint16_t)(rx->avail_idx & (rx->size - 1));
            rx->avail_idx++;
        }
        barrier();
        tx->avail[1] = tx->avail_idx;
        rx->avail[1] = rx->avail_idx;
        __asm__ volatile("mfence" ::: "memory");
        vw(vs.base, VM_QUEUE_NOTIFY, 1);
        vw(vs.base, VM_QUEUE_NOTIFY, 0);
        __asm__ volatile("pause");
    }
}

static void vs_bad(void) {
    uint64_t cid = vs.cid, raw = (uint64_t)(uintptr_t)vs_raw;
    const uint16_t N = VRING_DESC_F_NEXT, W = VRING_DESC_F_WRITE;
    uint32_t p = 40000;
    /* Packets the device must not act on (5000 has a host listener that counts connections). */
    if (vs_bad_simple("src_cid", p++, 99, VS_HOST, 5000, VS_STREAM, OP_REQUEST, 0, VS_HDR, 0)) return;
    if (vs_bad_simple("dst_cid", p++, cid, 7, 5000, VS_STREAM, OP_REQUEST, 0, VS_HDR, 0)) return;
    if (vs_bad_simple("unknown_op", p++, cid, VS_HOST, 5000, VS_STREAM, 99, 0, VS_HDR, 0)) return;
    if (vs_bad_simple("bad_type", p++, cid, VS_HOST, 5000, 2, OP_REQUEST, 0, VS_HDR, 0)) return;
    /* 20 bytes of a header that is whole in memory: the device must not read past them */
    if (vs_bad_simple("short_desc", p++, cid, VS_HOST, 5000, VS_STREAM, OP_REQUEST, 0, 20, 0)) return;
    if (vs_bad_simple("rw_no_conn", p++, cid, VS_HOST, 5000, VS_STREAM, OP_RW, 5, VS_HDR + 5, 0)) return;
    if (vs_bad_simple("writable_desc", p++, cid, VS_HOST, 5000, VS_STREAM, OP_REQUEST, 0, VS_HDR, W)) return;
    {   /* a good REQUEST to a port nobody listens on, its header in three descriptors: RST */
        struct vs_hdr *h = (struct vs_hdr *)vs_raw;
        uint32_t port = p++;
        vs_fill(h, port, 5001, OP_REQUEST, 0, 0, 65536, 0);
        struct rawdesc d[3] = {{raw, 10, N, 1}, {raw + 10, 20, N, 2}, {raw + 30, 14, 0, 0}};
        vs_watch(port);
        int used = vs_raw_chain(d, 3);
        vs_watch_wait(1000, 1);
        vs_bad_line("split3", used);
        putc_('\n');
        if (vs_bad_check("split3")) return;
    }
    {   /* RW whose len (1000) is beyond its descriptor (10 bytes of payload), with a secret
           right after in memory that must never reach the host */
        uint32_t port = p++;
        uint32_t op = vs_bad_connect(port, 5004);
        struct vs_hdr *h = (struct vs_hdr *)vs_raw;
        vs_fill(h, port, 5004, OP_RW, 0, 1000, 65536, 0);
        memcpy(vs_raw + VS_HDR, "0123456789", 10);
        for (uint32_t i = VS_HDR + 10; i < VS_HDR + 1100; i++) vs_raw[i] = (uint8_t)"SECRET-"[i % 7];
        struct rawdesc d = {raw, VS_HDR + 10, 0, 0};
        int used = op == OP_RESPONSE ? vs_raw_chain(&d, 1) : 0;
        if (op == OP_RESPONSE) vs_watch_wait(300, 1);
        vs_bad_line("len_too_big", used);
        puts_(" connect=");
        put_dec(op);
        putc_('\n');
        if (op == OP_RESPONSE && !vs.w_rst) {  /* still open: a good RW, then RST */
            vs_fill(h, port, 5004, OP_RW, 0, 6, 65536, 0);
            memcpy(vs_raw + VS_HDR, "AFTER\n", 6);
            vs_send_hdr(h, vs_raw + VS_HDR, 6);
            vs_idle(50);
        }
        vs_bad_rst(port, 5004);
        if (vs_bad_check("len_too_big")) return;
    }
    {   /* RW without waiting for credit, to a host program that reads nothing, until 300000
           bytes beyond the window the device last advertised (buf_alloc + fwd_cnt), or its RST */
        uint32_t port = p++;
        uint32_t op = vs_bad_connect(port, 5004), sent = 0, limit = 0;
        uint64_t end = deadline_ms(VS_TIMEOUT_MS);
        struct vs_hdr h;
        while (op == OP_RESPONSE && !vs.w_rst && sent < (limit = vs.w_buf_alloc + vs.w_fwd_cnt) + 300000u &&
               rdtsc() < end) {
            uint32_t n = VS_MAXPAY;
            vs_fill(&h, port, 5004, OP_RW, 0, n, 65536, 0);
            if (vs_send_hdr(&h, vs_pattern, n)) break;
            sent += n;
        }
        vs_watch_wait(500, 1000);
        vs_bad_line("over_credit", op == OP_RESPONSE);
        puts_(" connect=");
        put_dec(op);
        puts_(" sent=");
        put_dec(sent);
        puts_(" window=");
        put_dec(limit);
        puts_(" credit_updates=");
        put_dec(vs.w_credit);
        putc_('\n');
        vs_bad_rst(port, 5004);
        if (vs_bad_check("over_credit")) return;
    }
    {   /* REQUESTs to 200 host ports nobody listens on: 200 RSTs */
        uint32_t port = p++, sent = 0;
        vs_watch(port);
        struct vs_hdr h;
        for (uint32_t i = 0; i < 200; i++) {
            vs_fill(&h, port, 20000 + i, OP_REQUEST, 0, 0, 65536, 0);
            if (vs_send_hdr(&h, 0, 0)) break;
            sent++;
        }
        vs_watch_wait(5000, 200);
        vs_bad_line("request_flood", 1);
        puts_(" sent=");
        put_dec(sent);
        putc_('\n');
        if (vs_bad_check("request_flood")) return;
    }
    {   /* rx buffers of 8 bytes, too small for any packet: the device must not write past them */
        for (uint32_t i = 0; i < VS_QMAX; i++)
            for (uint32_t j = 0; j < 64; j++) vs_rxbuf[i][j] = 0xa5;
        const char *why = vs_init(8);
        uint64_t short_before = vs.short_rx, errors_before = vs.errors;
        uint32_t port = p++;
        struct vs_hdr h;
        vs_fill(&h, port, 5001, OP_REQUEST, 0, 0, 65536, 0);
        vs_watch(port);
        if (!why) vs_send_hdr(&h, 0, 0);
        vs_watch_wait(500, 1);
        uint32_t over = 0, status = vr(vs.base, VM_STATUS);
        for (uint32_t i = 0; i < VS_QMAX; i++)
            for (uint32_t j = 8; j < 64; j++) over += vs_rxbuf[i][j] != 0xa5;
        vs_bad_line("small_rx", !why);
        puts_(" short=");
        put_dec(vs.short_rx - short_before);
        puts_(" too_long=");
        put_dec(vs.errors - errors_before);
        puts_(" over=");
        put_dec(over);
        putc_('\n');
        vs.watch_port = 0;
        why = vs_init(VS_PKT);
        if (why) {
            puts_("PROBE: vsock bad reinit after=small_rx status=");
            put_hex(status);
            puts_(" why=");
            puts_(why);
            putc_('\n');
            return;
        }
    }
    vs.watch_port = 0;
    int ok = vs_out(5000);
    puts_("PROBE: vsock bad survived out=");
    puts_(ok ? "ok" : "failed");
    puts_(" dev_status=");
    put_hex(vr(vs.base, VM_STATUS));
    putc_('\n');
}

static void vsock_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    const char *source;
    const char *why = vs_open(cmdline, rsdp_hint, &source);
    if (why) {
        puts_("PROBE: vsock failed init=");
        puts_(why);
        if (vs.n >= 0) {
            puts_(" status=");
            put_hex(vr(vs.base, VM_STATUS));
        }
        putc_('\n');
        if (vs.n >= 0) virtio_reset(vs.base);
        return;
    }
    puts_("PROBE: vsock dev=");
    put_dec((uint64_t)vs.n);
    puts_(" base=");
    put_hex(vs.base);
    puts_(" gsi=");
    put_dec(vs.gsi);
    puts_(" features=");
    put_hex(vs.offered);
    puts_(" cid=");
    put_dec(vs.cid);
    puts_(" driver_features=");
    put_hex(vs.features);
    puts_(" queue_num_max=");
    put_dec(virtio_queue_max(vs.base, 0));
    puts_(" queues=");
    put_dec(vs.q[0].size);
    putc_(',');
    put_dec(vs.q[1].size);
    putc_(',');
    put_dec(vs.q[2].size);
    puts_(" source=");
    puts_(source);
    putc_('\n');
    if (word_is(mode, "test")) vs_test();
    else if (word_is(mode, "bad")) vs_bad();
    else if (word_is(mode, "flood")) vs_flood();
    virtio_reset(vs.base);
}

/* probe.bench=vsockrx|vsocktx probe.n=N: one connection's throughput, timed by the guest.
 * vsocktx connects to the host's port 5002 and sends N bytes (byte i of the stream is
 * i & 0xff) in RW packets of up to 4 KiB within the host's credit, timed from the RESPONSE
 * until the device used the last one, then shuts down ("PROBE: vsock shutdown sent port=5002"
 * once the device took the SHUTDOWN) and waits for the device's RST; vsockrx prints
 * "PROBE: vsock listening port=1236" (buf_alloc 256 KiB) and times from the first byte to the
 * N-th. Then: PROBE: bench vsocktx|vsockrx n=N tsc=CYCLES bytes=N packets=N credit_waits=N
 * updates=N errors=N end=OP (end: how the connection ended, 3 for RST), or
 * PROBE: bench vsocktx|vsockrx failed <why> bytes=N; then "PROBE: vsock device reset" once the
 * device is reset, unless probe.keep=1 leaves it live (with probe.end=halt: for ever). */
static void bench_vsock(const char *cmdline, uint64_t rsdp_hint, const char *name, uint64_t n) {
    const char *source, *tsrc;
    uint64_t khz = tsc_khz(&tsrc);
    puts_("PROBE: tsc khz=");
    put_dec(khz);
    puts_(" source=");
    puts_(tsrc);
    putc_('\n');
    const char *err = vs_open(cmdline, rsdp_hint, &source);
    int tx = word_is(name, "vsocktx");
    struct vconn *c = 0;
    uint64_t t0 = 0, t1 = 0, sent = 0, packets = 0, waits = 0, end_op = 0;
    if (!err && tx) {
        c = vs_connect(5002, M_SINK, 65536);
        if (vs_wait_state(&c->state, C_CONNECTING, VS_TIMEOUT_MS)) err = "timeout-connect";
        else if (c->state != C_OPEN) err = "refused";
    } else if (!err) {
        vs_listen(1236, M_SINK, 256 << 10);
        puts_("PROBE: vsock listening port=1236\n");
        uint64_t end = deadline_ms(60000);
        for (uint32_t spin = 1; !c; spin++) {
            vs_poll();
            for (int i = 0; i < VS_CONNS; i++) if (vconns[i].state == C_OPEN) c = &vconns[i];
            if (!(spin & 255) && rdtsc() > end) { err = "timeout-accept"; break; }
        }
    }
    if (!err && tx) {
        t0 = rdtsc();
        uint64_t end = deadline_ms(60000);
        for (uint32_t spin = 1; sent < n && c->state == C_OPEN; spin++) {
            vs_poll();
            int posted = 0;
            int64_t credit;
            while (sent < n && vs_can_send() && (credit = vs_credit(c)) > 0) {
                uint32_t k = n - sent < VS_MAXPAY ? (uint32_t)(n - sent) : VS_MAXPAY;
                if ((int64_t)k > credit) k = (uint32_t)credit;
                vs_conn_rw(c, vs_pattern + (sent & 255), k, 0, 1);
                sent += k;
                packets++;
                posted = 1;
            }
            if (posted) {
                vs.tx_kick = 0;
                vs_notify(1);
                continue;
            }
            if (vs_credit(c) <= 0) waits++;
            if (!(spin & 255) && rdtsc() > end) { err = "timeout-send"; break; }
            __asm__ volatile("pause");
        }
        for (uint32_t spin = 1; !err && vs.ntx_free < vs.tx_slots; spin++) {
            vs_poll();
            if (!(spin & 255) && rdtsc() > end) err = "timeout-used";
        }
        t1 = rdtsc();
        if (!err && c->state != C_OPEN) err = "closed";
        if (!err) {
            /* SHUTDOWN, and once the device took it say so (a host program may only now start
               reading what it was sent), then wait for the device's RST or SHUTDOWN */
            vs_conn_ctl(c, OP_SHUTDOWN, 3);
            c->state = C_CLOSING;
            for (uint32_t spin = 1; (vs.ctl_n || vs.ntx_free < vs.tx_slots) && c->state == C_CLOSING; spin++) {
                vs_poll();
                if (!(spin & 255) && rdtsc() > end) { vs_timeout("shutdown-used"); break; }
            }
            puts_("PROBE: vsock shutdown sent port=5002\n");
            if (vs_wait_state(&c->state, C_CLOSING, 60000)) vs_timeout("close");
            end_op = c->end_op;
        }
    } else if (!err) {
        uint64_t end = deadline_ms(60000), last_bytes = 0;
        for (uint32_t spin = 1; c->bytes < n && c->state == C_OPEN; spin++) {
            vs_poll();
            vs_service();
            if (!(spin & 1023)) {
                if (c->bytes != last_bytes) { last_bytes = c->bytes; end = deadline_ms(60000); }
                else if (rdtsc() > end) { err = "timeout-receive"; break; }
            }
        }
        t1 = rdtsc();
        t0 = c->first_rx;
        sent = c->bytes;
        if (!err && c->bytes < n) err = "closed";
    }
    if (c) {
        vs_close(c);
        if (!end_op) end_op = c->end_op;
    }
    int reset = vs.n >= 0 && !word_is(cmdline_arg(cmdline, "probe.keep"), "1");
    if (reset) virtio_reset(vs.base);
    puts_("PROBE: bench ");
    puts_(tx ? "vsocktx" : "vsockrx");
    if (err) {
        puts_(" failed ");
        puts_(err);
        puts_(" bytes=");
        put_dec(sent);
        putc_('\n');
        if (reset) puts_("PROBE: vsock device reset\n");
        return;
    }
    puts_(" n=");
    put_dec(n);
    puts_(" tsc=");
    put_dec(t1 - t0);
    puts_(" bytes=");
    put_dec(sent);
    puts_(" packets=");
    put_dec(tx ? packets : vs.rx_packets);
    puts_(" credit_waits=");
    put_dec(waits);
    puts_(" updates=");
    put_dec(c->updates);
    puts_(" errors=");
    put_dec(vs.errors);
    puts_(" end=");
    put_dec(end_op);
    putc_('\n');
    if (reset) puts_("PROBE: vsock device reset\n");
}

/* ---- Benchmarks: probe.bench=pio|scratch|console|blkread|blkwrite|blkrand probe.n=N ------ */

/* N port writes: to an unused port (pio), to the UART's scratch register (scratch), or N
 * bytes of text to the UART's transmit register without polling its status (console). The
 * guest times the loop with its TSC and reports "PROBE: bench KIND n=N tsc=CYCLES". */
static void bench(const char *cmdline, uint64_t rsdp_hint) {
    const char *kind = cmdline_arg(cmdline, "probe.bench");
    if (!kind) return;
    uint64_t n = parse_dec(cmdline_arg(cmdline, "probe.n"));
    if (word_is(kind, "blkread")) { bench_blk(cmdline, rsdp_hint, kind, "blkread", n); return; }
    if (word_is(kind, "blkwrite")) { bench_blk(cmdline, rsdp_hint, kind, "blkwrite", n); return; }
    if (word_is(kind, "blkrand")) { bench_blk(cmdline, rsdp_hint, kind, "blkrand", n); return; }
    if (word_is(kind, "blkid")) { bench_blk(cmdline, rsdp_hint, kind, "blkid", n); return; }
    if (word_is(kind, "vsockrx") || word_is(kind, "vsocktx")) { bench_vsock(cmdline, rsdp_hint, kind, n); return; }
    if (word_is(kind, "nettx")) { net_bench(cmdline, rsdp_hint, n); return; } /* net.c */
    static const char text[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";
    const char *name = "none";
    uint64_t t0 = rdtsc();
    if (word_is(kind, "pio")) {
        name = "pio";
        for (uint64_t i = 0; i < n; i++) outb(0x80, (uint8_t)i);
    } else if (word_is(kind, "scratch")) {
        name = "scratch";
        for (uint64_t i = 0; i < n; i++) outb(COM1 + 7, (uint8_t)i);
    } else if (word_is(kind, "scratchtext")) { /* the console loop's shape, to the scratch register */
        name = "scratchtext";
        for (uint64_t i = 0; i < n; i++) outb(COM1 + 7, (uint8_t)text[i & 63]);
    } else if (word_is(kind, "console")) {
        name = "console";
        for (uint64_t i = 0; i < n; i++) outb(COM1, (uint8_t)text[i & 63]);
    }
    uint64_t cycles = rdtsc() - t0;
    puts_("PROBE: bench ");
    puts_(name);
    puts_(" n=");
    put_dec(n);
    puts_(" tsc=");
    put_dec(cycles);
    putc_('\n');
}

/* ---- Exports for net.c and fs.c (see net.h, fs.h): the probe's own helpers, for them ---- */

void probe_puts(const char *s) { puts_(s); }
void probe_putc(char c) { putc_(c); }
void probe_put_hex(uint64_t v) { put_hex(v); }
void probe_put_dec(uint64_t v) { put_dec(v); }
const char *probe_cmdline_arg(const char *cmdline, const char *key) { return cmdline_arg(cmdline, key); }
int probe_word_is(const char *v, const char *word) { return word_is(v, word); }
uint64_t probe_parse_dec(const char *v) { return parse_dec(v); }
uint64_t probe_deadline_ms(uint64_t ms) { return deadline_ms(ms); }
uint64_t probe_tsc_khz(const char **source) { return tsc_khz(source); }
int probe_virtio_next(const char *cmdline, uint64_t rsdp_hint, uint32_t device_id, int after, uint64_t *base,
                      uint32_t *gsi) {
    struct vloc v[VIRTIO_MAX_DEVS];
    const char *source;
    int n = virtio_devices(cmdline, rsdp_hint, v, &source);
    for (int i = after + 1; i < n; i++) {
        if (mmio_read32(v[i].base + VM_DEVICE_ID) != device_id) continue;
        *base = v[i].base;
        *gsi = v[i].gsi;
        return i;
    }
    return -1;
}
int probe_virtio_find(const char *cmdline, uint64_t rsdp_hint, uint32_t device_id, uint64_t *base, uint32_t *gsi) {
    return probe_virtio_next(cmdline, rsdp_hint, device_id, -1, base, gsi);
}

/* ---- Exports for pci.c (see pci.h): ACPI tables, and the blk driver on another transport -- */

const uint8_t *probe_acpi_table(uint64_t rsdp_hint, const char *sig) { return acpi_table(acpi_rsdp(rsdp_hint), sig); }
const uint8_t *probe_acpi_dsdt(uint64_t rsdp_hint) { return acpi_dsdt(acpi_rsdp(rsdp_hint)); }
int probe_dsdt_has_eisaid(uint64_t rsdp_hint, uint32_t id) {
    const uint8_t *dsdt = acpi_dsdt(acpi_rsdp(rsdp_hint));
    return dsdt ? dsdt_has_eisaid(dsdt, id) : -1;
}

static struct blk pci_blk; /* one device at a time, like vq_mem */
struct blk *probe_blk_open(int n, const struct vio_ops *ops, void *ctx) {
    pci_blk = (struct blk){0};
    pci_blk.n = n;
    pci_blk.ops = ops;
    pci_blk.ctx = ctx;
    return &pci_blk;
}
const char *probe_blk_init(struct blk *b) { return blk_init(b); }
void probe_blk_test(struct blk *b) { blk_test(b); }
void probe_blk_reset(struct blk *b) { blk_reset(b); }
void probe_blk_post_read(struct blk *b, uint64_t sector, uint32_t len) {
    struct seg s = {(uint64_t)(uintptr_t)blk_buf, len, VRING_DESC_F_WRITE};
    blk_post(b, 0, BLK_T_IN, sector, &s, 1);
}
void probe_blk_notify(struct blk *b) { blk_notify(b); }
int probe_blk_used(struct blk *b) { return VQ_USED[1] != b->used_idx; }
int probe_blk_reap(struct blk *b, uint64_t ms) {
    if (blk_reap(b, ms)) return -1;
    return *(volatile uint8_t *)&blk_slots[0].status;
}
int probe_blk_read(struct blk *b, uint64_t sector, uint32_t len, uint64_t *fnv) {
    for (uint32_t i = 0; i < len; i++) blk_buf[i] = 0xa5;
    probe_blk_post_read(b, sector, len);
    blk_notify(b);
    int st = probe_blk_reap(b, BLK_TIMEOUT_MS);
    if (fnv) *fnv = fnv1a(FNV_INIT, blk_buf, len);
    return st;
}
uint64_t probe_blk_capacity(const struct blk *b) { return b->capacity; }

/* Entered through the PVH note (QEMU's microvm boots the ELF this way): start_info is Xen's
 * struct hvm_start_info, whose command line pointer is at offset 24. */
void pvh_main(const uint8_t *start_info) {
    puts_("PROBE: hello\n");
    const char *cmdline = (const char *)(uintptr_t)*(const uint64_t *)(start_info + 24);
    if (cmdline && cmdline_arg(cmdline, "probe.tiny")) triple_fault(); /* the scale benchmark's guest */
    puts_("PROBE: pvh cmdline=");
    if (cmdline) puts_(cmdline);
    putc_('\n');
    uint64_t rsdp = *(const uint64_t *)(start_info + 32); /* rsdp_paddr */
    if (cmdline) bench(cmdline, rsdp);
    const char *blk = cmdline ? cmdline_arg(cmdline, "probe.blk") : 0;
    if (blk) blk_probe(cmdline, rsdp, blk);
    const char *net = cmdline ? cmdline_arg(cmdline, "probe.net") : 0;
    if (net) net_probe(cmdline, rsdp, net); /* net.c */
    const char *fsm = cmdline ? cmdline_arg(cmdline, "probe.fs") : 0;
    if (fsm) fs_probe(cmdline, rsdp, fsm); /* fs.c */
    const char *p9m = cmdline ? cmdline_arg(cmdline, "probe.p9") : 0;
    if (p9m) p9_probe(cmdline, rsdp, p9m); /* p9.c */
    const char *vsk = cmdline ? cmdline_arg(cmdline, "probe.vsock") : 0;
    if (vsk) vsock_probe(cmdline, rsdp, vsk);
    const char *pci = cmdline ? cmdline_arg(cmdline, "probe.pci") : 0;
    if (pci) pci_probe(cmdline, rsdp, pci); /* pci.c */
    puts_("PROBE: done\n");
    if (cmdline && word_is(cmdline_arg(cmdline, "probe.end"), "halt")) {
        puts_("PROBE: halting\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (cmdline && word_is(cmdline_arg(cmdline, "probe.end"), "loop")) loop_forever();
    triple_fault(); /* QEMU started with -no-reboot exits */
}

/* probe.i8042=test: Linux's i8042 probe, polling the status register as Linux does (at most
 * 10,000 polls per answer byte). Reports each answer and the most polls any byte needed. */
static int kbc_polls_max;
static int kbc_read(void) {
    for (int i = 0; i < 10000; i++) {
        if (inb(0x64) & 1) {
            if (i > kbc_polls_max) kbc_polls_max = i;
            return inb(0x60);
        }
    }
    kbc_polls_max = 10000;
    return -1;
}
static int kbc_cmd(uint8_t cmd) { outb(0x64, cmd); return kbc_read(); }
static void put_kbc(const char *name, int v) {
    puts_(name);
    if (v < 0) puts_("none"); else put_hex((uint64_t)v);
}
static void i8042_probe(void) {
    int status = inb(0x64);
    int ctr = kbc_cmd(0x20);
    outb(0x64, 0x60);
    outb(0x60, (uint8_t)((ctr | 0x10) & ~0x01)); /* keyboard off, its interrupt off */
    int ctr2 = kbc_cmd(0x20);
    int self = kbc_cmd(0xaa), kbd = kbc_cmd(0xab);
    outb(0x64, 0xd3);
    outb(0x60, 0x5a); /* AUX loop: comes back without the AUX-data flag when there is no AUX */
    int loop_status = -1;
    for (int i = 0; i < 10000 && loop_status < 0; i++) if (inb(0x64) & 1) loop_status = inb(0x64);
    int loop = kbc_read();
    int auxtest = kbc_cmd(0xa9);
    outb(0x60, 0xf2); /* keyboard GETID */
    int ack = kbc_read(), id0 = kbc_read(), id1 = kbc_read();
    puts_("PROBE: i8042");
    put_kbc(" status=", status); put_kbc(" ctr=", ctr); put_kbc(" ctr2=", ctr2);
    put_kbc(" selftest=", self); put_kbc(" kbdtest=", kbd);
    put_kbc(" auxloop=", loop); put_kbc(" auxloop_status=", loop_status); put_kbc(" auxtest=", auxtest);
    put_kbc(" ack=", ack); put_kbc(" id=", id0 < 0 || id1 < 0 ? -1 : (id0 << 8) | id1);
    puts_(" polls_max=");
    put_dec((uint64_t)kbc_polls_max);
    putc_('\n');
}

void probe_main(const uint8_t *zp) {
    uint64_t entry;
    __asm__ volatile("lea _start(%%rip), %0" : "=r"(entry));
    puts_("PROBE: hello\n");
    uint32_t cmd_ptr = *(const uint32_t *)(zp + 0x228);
    const char *cmdline = (const char *)(uintptr_t)cmd_ptr;
    if (cmd_ptr && cmdline_arg(cmdline, "probe.tiny")) { /* the scale benchmark's guest */
        outb(0x64, 0xfe);
        for (;;) __asm__ volatile("hlt");
    }
    puts_("PROBE: entry=");
    put_hex(entry);
    puts_(" zero_page=");
    put_hex((uint64_t)(uintptr_t)zp);
    putc_('\n');

    uint8_t loader = zp[0x210];
    uint16_t boot_flag = *(const uint16_t *)(zp + 0x1fe);
    uint32_t cmd_size = *(const uint32_t *)(zp + 0x238);
    puts_("PROBE: loader=");
    put_hex(loader);
    puts_(" boot_flag=");
    put_hex(boot_flag);
    puts_(" cmdline_ptr=");
    put_hex(cmd_ptr);
    puts_(" cmdline_size=");
    put_dec(cmd_size);
    putc_('\n');
    puts_("PROBE: cmdline=");
    if (cmd_ptr) puts_(cmdline);
    putc_('\n');
    if (cmd_ptr) bench(cmdline, *(const uint64_t *)(zp + 0x70));

    uint8_t n = zp[0x1e8];
    puts_("PROBE: e820 count=");
    put_dec(n);
    putc_('\n');
    for (int i = 0; i < n && i < 128; i++) {
        const uint8_t *e = zp + 0x2d0 + 20 * i;
        puts_("PROBE: e820 ");
        put_hex(*(const uint64_t *)e);
        putc_(' ');
        put_hex(*(const uint64_t *)(e + 8));
        putc_(' ');
        put_dec(*(const uint32_t *)(e + 16));
        putc_('\n');
    }

    uint32_t rd_addr = *(const uint32_t *)(zp + 0x218);
    uint32_t rd_size = *(const uint32_t *)(zp + 0x21c);
    uint64_t fnv = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < rd_size; i++) {
        fnv ^= ((const volatile uint8_t *)(uintptr_t)rd_addr)[i];
        fnv *= 0x100000001b3ull;
    }
    puts_("PROBE: initrd addr=");
    put_hex(rd_addr);
    puts_(" size=");
    put_dec(rd_size);
    puts_(" fnv=");
    put_hex(rd_size ? fnv : 0);
    putc_('\n');

    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    uint32_t apic_id = b >> 24, logical = (b >> 16) & 0xff, hv = (c >> 31) & 1, tscdl = (c >> 24) & 1;
    char sig[13];
    cpuid(0x40000000, &a, (uint32_t *)&sig[0], (uint32_t *)&sig[4], (uint32_t *)&sig[8]);
    sig[12] = 0;
    puts_("PROBE: cpuid hypervisor_bit=");
    put_dec(hv);
    puts_(" signature=");
    puts_(hv ? sig : "none");
    puts_(" apic_id=");
    put_dec(apic_id);
    puts_(" logical=");
    put_dec(logical);
    puts_(" tsc_deadline=");
    put_dec(tscdl);
    putc_('\n');

    const char *smp = cmd_ptr ? cmdline_arg(cmdline, "probe.smp") : 0;
    const char *end_early = cmd_ptr ? cmdline_arg(cmdline, "probe.end") : 0;
    ap_tick = word_is(end_early, "tick") || word_is(end_early, "hostile"); /* APs spin counting */
    if (smp) start_aps(zp, smp);

    const char *blk = cmd_ptr ? cmdline_arg(cmdline, "probe.blk") : 0;
    if (blk) blk_probe(cmdline, *(const uint64_t *)(zp + 0x70), blk);
    const char *vsk = cmd_ptr ? cmdline_arg(cmdline, "probe.vsock") : 0;
    if (vsk) vsock_probe(cmdline, *(const uint64_t *)(zp + 0x70), vsk);
    if (cmd_ptr && word_is(cmdline_arg(cmdline, "probe.i8042"), "test")) i8042_probe();
    const char *net = cmd_ptr ? cmdline_arg(cmdline, "probe.net") : 0;
    if (net) net_probe(cmdline, *(const uint64_t *)(zp + 0x70), net); /* net.c */
    const char *fsm = cmd_ptr ? cmdline_arg(cmdline, "probe.fs") : 0;
    if (fsm) fs_probe(cmdline, *(const uint64_t *)(zp + 0x70), fsm); /* fs.c */
    const char *p9m = cmd_ptr ? cmdline_arg(cmdline, "probe.p9") : 0;
    if (p9m) p9_probe(cmdline, *(const uint64_t *)(zp + 0x70), p9m); /* p9.c */
    const char *pci = cmd_ptr ? cmdline_arg(cmdline, "probe.pci") : 0;
    if (pci) pci_probe(cmdline, *(const uint64_t *)(zp + 0x70), pci); /* pci.c */

    const char *marker = cmd_ptr ? cmdline_arg(cmdline, "probe.marker") : 0;
    if (marker) { /* the port, then the MMIO register with the next value */
        outb(0x440, (uint8_t)parse_dec(marker));
        *(volatile uint8_t *)(uintptr_t)0xd0001000u = (uint8_t)(parse_dec(marker) + 1);
    }
    const char *end = cmd_ptr ? cmdline_arg(cmdline, "probe.end") : 0;
    const char *code = cmd_ptr ? cmdline_arg(cmdline, "probe.exit") : 0;
    if (code) {
        puts_("PROBE: exit ");
        put_dec(parse_dec(code));
        putc_('\n');
        *(volatile uint32_t *)(uintptr_t)0xd0000000u = (uint32_t)parse_dec(code);
    }
    if (word_is(end, "acpi-off")) {
        puts_("PROBE: acpi soft-off\n");
        __asm__ volatile("outw %0, %1" ::"a"((uint16_t)((5 << 10) | (1 << 13))), "Nd"((uint16_t)0x604)); /* PM1a_CNT: SLP_TYP=S5, SLP_EN */
        for (;;) __asm__ volatile("pause");
    }
    if (word_is(end, "power")) power_button_wait();
    if (word_is(end, "panic")) {
        puts_("[    0.100000] Kernel panic - not syncing: probe asked for it\n");
        for (;;) __asm__ volatile("pause");
    }
    if (word_is(end, "unknown")) { touch_unknown_hardware(); reset(); }
    puts_("PROBE: done\n");
    if (word_is(end, "echo")) echo();
    if (word_is(end, "triple")) triple_fault();
    if (word_is(end, "halt")) { puts_("PROBE: halting\n"); for (;;) __asm__ volatile("cli; hlt"); }
    if (word_is(end, "spin")) { puts_("PROBE: spinning\n"); for (;;) __asm__ volatile("pause"); }
    if (word_is(end, "tick")) tick(ap_started + 1);
    if (word_is(end, "hostile")) {
        uint64_t ram_end = 0;
        for (int i = 0; i < n && i < 128; i++) {
            const uint8_t *e = zp + 0x2d0 + 20 * i;
            uint64_t top = *(const uint64_t *)e + *(const uint64_t *)(e + 8);
            if (*(const uint32_t *)(e + 16) == 1 && top <= 0xc0000000ull && top > ram_end) ram_end = top;
        }
        hostile(ram_end);
    }
    if (word_is(end, "loop")) loop_forever(); /* a breakpoint at loop_target is hit at once, again and again */
    if (word_is(end, "flood-raw")) { /* no newline, ever */
        for (;;) puts_("0123456789abcdef");
    }
    if (word_is(end, "flood")) {
        for (uint64_t i = 0;; i++) { puts_("PROBE: flood "); put_dec(i); putc_('\n'); }
    }
    reset();
}
