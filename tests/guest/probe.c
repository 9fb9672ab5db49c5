/* The probe guest: a freestanding program entered like a Linux kernel, which reports over the
 * serial port what the VMM gave it, then ends as its command line asks (`probe.end=`).
 *
 * Report lines all start with "PROBE: " so tests can pick them out; see tests/probe.py for the
 * parser. Everything is reached RIP-relative and nothing needs relocation, so the same code
 * runs from the ELF image (linked at 2 MiB) and from the bzImage (loaded at himem_start). */
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

/* ---- Benchmarks: probe.bench=pio|scratch|console probe.n=N ------------------------------- */

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* N port writes: to an unused port (pio), to the UART's scratch register (scratch), or N
 * bytes of text to the UART's transmit register without polling its status (console). The
 * guest times the loop with its TSC and reports "PROBE: bench KIND n=N tsc=CYCLES". */
static void bench(const char *cmdline) {
    const char *kind = cmdline_arg(cmdline, "probe.bench");
    if (!kind) return;
    uint64_t n = parse_dec(cmdline_arg(cmdline, "probe.n"));
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
    if (cmdline) bench(cmdline);
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
    if (cmd_ptr) bench(cmdline);

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
