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
 * requests (see blk_probe and bench_blk). */
#include <stdint.h>

#define COM1 0x3f8
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }

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
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memcpy(void *d, const void *s, unsigned long n) {
    uint8_t *p = d;
    const uint8_t *q = s;
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
#define BLK_SLOTS 8
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
static struct blk_slot blk_slots[BLK_SLOTS] __attribute__((aligned(64)));
static uint8_t blk_buf[BLK_BUF_SIZE] __attribute__((aligned(4096)));

struct blk {
    int n;
    uint64_t base;
    uint32_t qsize, slots;
    uint16_t avail_idx, used_idx;
    uint64_t offered, features, capacity;
    uint32_t seg_max, blk_size, last_len, last_id;
    int ro;
};

#define VQ_DESC ((volatile struct vring_desc *)(uintptr_t)vq_mem[0])
#define VQ_AVAIL ((volatile uint16_t *)(uintptr_t)vq_mem[1])          /* flags, idx, ring[] */
#define VQ_USED ((volatile uint16_t *)(uintptr_t)vq_mem[2])           /* flags, idx */
#define VQ_USED_RING ((volatile uint32_t *)(uintptr_t)(vq_mem[2] + 4)) /* {id, len}[] */

static uint32_t blk_r(const struct blk *b, uint32_t off) { return mmio_read32(b->base + off); }
static void blk_w(const struct blk *b, uint32_t off, uint32_t v) { mmio_write32(b->base + off, v); }
static uint8_t cfg8(const struct blk *b, uint32_t off) { return *(volatile uint8_t *)(uintptr_t)(b->base + VM_CONFIG + off); }
static uint32_t cfg32(const struct blk *b, uint32_t off) { return blk_r(b, VM_CONFIG + off); }
static uint64_t cfg64(const struct blk *b, uint32_t off) {
    uint32_t gen, lo, hi;
    int tries = 0;
    do {
        gen = blk_r(b, VM_CONFIG_GENERATION);
        lo = cfg32(b, off);
        hi = cfg32(b, off + 4);
    } while (gen != blk_r(b, VM_CONFIG_GENERATION) && ++tries < 100);
    return (uint64_t)hi << 32 | lo;
}

static void blk_reset(struct blk *b) {
    blk_w(b, VM_STATUS, 0);
    for (int i = 0; i < 1000000 && blk_r(b, VM_STATUS); i++) __asm__ volatile("pause");
}

#define QNUM_DEFAULT 0xffffffffu

/* Reset, negotiate features and set up queue 0 with `qnum` entries (QNUM_DEFAULT: as many as
 * the device allows, up to 256) at the given addresses, then set DRIVER_OK. Returns the Status register as read back at the end, or 0 with *why
 * set when it went wrong before DRIVER_OK. */
static uint32_t blk_setup(struct blk *b, uint32_t qnum, uint64_t desc, uint64_t driver, uint64_t device, const char **why) {
    *why = 0;
    blk_reset(b);
    if (blk_r(b, VM_MAGIC) != VIRTIO_MAGIC || blk_r(b, VM_VERSION) != 2 || blk_r(b, VM_DEVICE_ID) != 2) {
        *why = "not-virtio-blk-v2";
        return 0;
    }
    if (blk_r(b, VM_STATUS) != 0) { *why = "reset-failed"; return 0; }
    blk_w(b, VM_STATUS, S_ACKNOWLEDGE);
    blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    blk_w(b, VM_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = blk_r(b, VM_DEVICE_FEATURES);
    blk_w(b, VM_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = blk_r(b, VM_DEVICE_FEATURES);
    b->offered = hi << 32 | lo;
    b->features = b->offered & BLK_WANTED;
    if (!(b->features & F_VERSION_1)) { *why = "no-version-1"; return 0; }
    blk_w(b, VM_DRIVER_FEATURES_SEL, 0);
    blk_w(b, VM_DRIVER_FEATURES, (uint32_t)b->features);
    blk_w(b, VM_DRIVER_FEATURES_SEL, 1);
    blk_w(b, VM_DRIVER_FEATURES, (uint32_t)(b->features >> 32));
    blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(blk_r(b, VM_STATUS) & S_FEATURES_OK)) { *why = "features-not-ok"; return 0; }

    blk_w(b, VM_QUEUE_SEL, 0);
    uint32_t max = blk_r(b, VM_QUEUE_NUM_MAX);
    if (!max) { *why = "no-queue-0"; return 0; }
    if (blk_r(b, VM_QUEUE_READY)) { *why = "queue-already-ready"; return 0; }
    if (qnum == QNUM_DEFAULT) qnum = max < VQ_MAX ? max : VQ_MAX;
    b->qsize = qnum ? qnum : 1; /* only ever a divisor once the device is live */
    b->slots = qnum / BLK_DPS < BLK_SLOTS ? qnum / BLK_DPS : BLK_SLOTS;
    b->avail_idx = b->used_idx = 0;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < 4096; i++) ((volatile uint8_t *)vq_mem[p])[i] = 0;
    blk_w(b, VM_QUEUE_NUM, qnum);
    blk_w(b, VM_QUEUE_DESC, (uint32_t)desc);
    blk_w(b, VM_QUEUE_DESC + 4, (uint32_t)(desc >> 32));
    blk_w(b, VM_QUEUE_DRIVER, (uint32_t)driver);
    blk_w(b, VM_QUEUE_DRIVER + 4, (uint32_t)(driver >> 32));
    blk_w(b, VM_QUEUE_DEVICE, (uint32_t)device);
    blk_w(b, VM_QUEUE_DEVICE + 4, (uint32_t)(device >> 32));
    blk_w(b, VM_QUEUE_READY, 1);
    blk_w(b, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    return blk_r(b, VM_STATUS);
}

/* The usual set-up: the queue as large as the device allows (up to 256), in vq_mem. Returns 0
 * when the device is live, else a reason. */
static const char *blk_init(struct blk *b) {
    const char *why;
    uint32_t s = blk_setup(b, QNUM_DEFAULT, (uint64_t)(uintptr_t)vq_mem[0], (uint64_t)(uintptr_t)vq_mem[1],
                           (uint64_t)(uintptr_t)vq_mem[2], &why);
    if (why) return why;
    if (s != (S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)) return "driver-ok-refused";
    if (b->slots == 0) return "queue-too-small";
    b->ro = (b->features & F_BLK_RO) != 0;
    b->capacity = cfg64(b, 0);
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
static void blk_chain(uint32_t slot, uint32_t type, const struct seg *segs, int nseg) {
    struct blk_slot *s = &blk_slots[slot];
    uint16_t d = (uint16_t)(slot * BLK_DPS);
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
    VQ_AVAIL[2 + (b->avail_idx & (b->qsize - 1))] = (uint16_t)(slot * BLK_DPS);
    barrier();
    VQ_AVAIL[1] = ++b->avail_idx;
}

/* Posts a request in slot `slot`: header, the data segments, the status byte. */
static void blk_post(struct blk *b, uint32_t slot, uint32_t type, uint64_t sector, const struct seg *segs, int nseg) {
    blk_chain(slot, type, segs, nseg);
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
    for (uint32_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
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
    uint32_t isr = blk_r(b, VM_INTERRUPT_STATUS);
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
        blk_test(&b);
    }
    if (word_is(mode, "bad")) puts_("PROBE: blk bad failed no-device\n");
}

/* probe.bench=blkread|blkwrite|blkrand|blkid probe.n=N [probe.bs=BYTES] [probe.qd=N]
 * [probe.dev=I]: N requests of BS bytes (default 4096) on virtio-blk device I (default the
 * first), sequential and wrapping at the capacity, or at random BS-aligned places; up to QD
 * (default 1) in flight. blkid sends GET_ID requests (20 bytes, no disk I/O): the cost of the
 * round trip alone. */
static void bench_blk(const char *cmdline, uint64_t rsdp_hint, const char *kind, const char *name, uint64_t n) {
    struct vloc v[VIRTIO_MAX_DEVS];
    const char *source, *tsrc;
    int count = virtio_devices(cmdline, rsdp_hint, v, &source);
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
    if (devi >= count || mmio_read32(v[devi].base + VM_DEVICE_ID) != 2) err = "no-device";
    else if (bs == 0 || bs % 512 || bs > BLK_BUF_SIZE) err = "bad-bs";
    if (!err) {
        b.n = devi;
        b.base = v[devi].base;
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
        if (b.base) blk_reset(&b);
        return;
    }
    if (qd < 1) qd = 1;
    if (qd > b.slots) qd = b.slots;
    if (qd > BLK_BUF_SIZE / bs) qd = BLK_BUF_SIZE / bs;
    /* Segments of at most 64 KiB, fewer and larger if the device allows fewer. */
    uint32_t max_segs = BLK_MAX_SEGS;
    if (b.seg_max && b.seg_max < max_segs) max_segs = b.seg_max;
    uint64_t seg_len = 65536;
    while ((bs + seg_len - 1) / seg_len > max_segs) seg_len *= 2;
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
        blk_chain(slot, type, segs, nseg);
    }
    uint64_t next = 0, lcg = 0x2545f4914f6cdd1dull, slots_of = b.capacity / spr;
    uint64_t issued = 0, done = 0, errors = 0, waits = 0;
    uint32_t free_slots[BLK_SLOTS], nfree = 0;
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
            uint32_t slot = b.last_id / BLK_DPS;
            if (b.last_id % BLK_DPS || slot >= qd) errors++; /* not a head we posted */
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
    static const char text[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";
    const char *name = "none";
    uint64_t t0 = rdtsc();
    if (word_is(kind, "pio")) {
        name = "pio";
        for (uint64_t i = 0; i < n; i++) outb(0x80, (uint8_t)i);
    } else if (word_is(kind, "scratch")) {
        name = "scratch";
        for (uint64_t i = 0; i < n; i++) outb(COM1 + 7, (uint8_t)i);
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
    puts_("PROBE: done\n");
    if (cmdline && word_is(cmdline_arg(cmdline, "probe.end"), "halt")) {
        puts_("PROBE: halting\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    triple_fault(); /* QEMU started with -no-reboot exits */
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
    uint32_t apic_id = b >> 24, logical = (b >> 16) & 0xff, hv = (c >> 31) & 1;
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
    putc_('\n');

    const char *smp = cmd_ptr ? cmdline_arg(cmdline, "probe.smp") : 0;
    if (smp) start_aps(zp, smp);

    const char *blk = cmd_ptr ? cmdline_arg(cmdline, "probe.blk") : 0;
    if (blk) blk_probe(cmdline, *(const uint64_t *)(zp + 0x70), blk);

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
    if (word_is(end, "flood")) {
        for (uint64_t i = 0;; i++) { puts_("PROBE: flood "); put_dec(i); putc_('\n'); }
    }
    reset();
}
