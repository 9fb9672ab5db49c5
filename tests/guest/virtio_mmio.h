/* What the probe's polled virtio-mmio drivers (fs.c, net.c) share: the register layout
 * (virtio 1.2, 4.2.2), the device status bits, split virtqueues (2.7) with their descriptors,
 * and the setup steps every such driver takes in the same order (reset, features with
 * VERSION_1, one queue after another, DRIVER_OK), as static inline functions on the device's
 * base address, plus the few freestanding helpers (rdtsc, barrier, copy, zero) both use.
 * Every register access is 32 bits wide but for the configuration space's 8- and 16-bit reads.
 * probe.c and pci.c keep their own copies. */
#ifndef PROBE_VIRTIO_MMIO_H
#define PROBE_VIRTIO_MMIO_H
#include <stdint.h>

/* virtio-mmio registers (virtio 1.2, 4.2.2) */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_DRIVER 0x090
#define R_QUEUE_DEVICE 0x0a0
#define R_CONFIG_GENERATION 0x0fc
#define R_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976u /* "virt" */

/* device status (2.1) */
#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 0x40u
#define ST_LIVE (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK)

#define F_VERSION_1 (1ull << 32)

/* descriptor flags */
#define D_NEXT 1
#define D_WRITE 2

static inline uint64_t rdtsc_(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#define barrier() __asm__ volatile("" ::: "memory")

static inline void copy(void *d, const void *s, uint32_t n) {
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--) *p++ = *q++;
}
static inline void zero(void *d, uint32_t n) {
    volatile uint8_t *p = d;
    while (n--) *p++ = 0;
}
static inline uint64_t addr_of(const void *p) { return (uint64_t)(uintptr_t)p; }

/* ---- Registers --------------------------------------------------------------------------- */

static inline uint32_t vm_read(uint64_t base, uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(base + off); }
static inline void vm_write(uint64_t base, uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(base + off) = v; }
static inline uint8_t vm_cfg8(uint64_t base, uint32_t off) {
    return *(volatile uint8_t *)(uintptr_t)(base + R_CONFIG + off);
}
static inline uint16_t vm_cfg16(uint64_t base, uint32_t off) {
    return *(volatile uint16_t *)(uintptr_t)(base + R_CONFIG + off);
}

/* Writes status 0 and polls (a bounded while) until the device reads back 0. */
static inline void vm_reset(uint64_t base) {
    vm_write(base, R_STATUS, 0);
    for (int i = 0; i < 1000000 && vm_read(base, R_STATUS); i++) __asm__ volatile("pause");
}

/* Reset, the device checked (virtio-mmio version 2, DeviceID `device_id`, else `not_it`),
 * ACKNOWLEDGE, DRIVER, the 64 offered feature bits read into *offered, the ones of `wanted`
 * among them (into *accepted unless it is 0) written back, which must include VERSION_1, and
 * FEATURES_OK. Returns 0 or a reason. */
static inline const char *vm_features(uint64_t base, uint32_t device_id, const char *not_it, uint64_t wanted,
                                      uint64_t *offered, uint64_t *accepted) {
    vm_reset(base);
    if (vm_read(base, R_MAGIC) != VIRTIO_MMIO_MAGIC || vm_read(base, R_VERSION) != 2 ||
        vm_read(base, R_DEVICE_ID) != device_id)
        return not_it;
    if (vm_read(base, R_STATUS)) return "reset-failed";
    vm_write(base, R_STATUS, ST_ACKNOWLEDGE);
    vm_write(base, R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
    vm_write(base, R_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = vm_read(base, R_DEVICE_FEATURES);
    vm_write(base, R_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = vm_read(base, R_DEVICE_FEATURES);
    *offered = hi << 32 | lo;
    uint64_t features = *offered & wanted;
    if (accepted) *accepted = features;
    if (!(features & F_VERSION_1)) return "no-version-1";
    vm_write(base, R_DRIVER_FEATURES_SEL, 0);
    vm_write(base, R_DRIVER_FEATURES, (uint32_t)features);
    vm_write(base, R_DRIVER_FEATURES_SEL, 1);
    vm_write(base, R_DRIVER_FEATURES, (uint32_t)(features >> 32));
    vm_write(base, R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    if (!(vm_read(base, R_STATUS) & ST_FEATURES_OK)) return "features-not-ok";
    return 0;
}

/* Sets DRIVER_OK (with the other three bits) and returns the status the device reads back. */
static inline uint32_t vm_driver_ok(uint64_t base) {
    vm_write(base, R_STATUS, ST_LIVE);
    return vm_read(base, R_STATUS);
}

static inline void vm_notify(uint64_t base, uint32_t idx) {
    __asm__ volatile("mfence" ::: "memory");
    vm_write(base, R_QUEUE_NOTIFY, idx);
}

/* ---- Split virtqueues -------------------------------------------------------------------- */

struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct seg { uint64_t addr; uint32_t len; uint16_t flags; };  /* one buffer of a chain */

struct vq {
    volatile struct vq_desc *desc;
    volatile uint16_t *avail;       /* flags, idx, ring[] */
    volatile uint16_t *used;        /* flags, idx */
    volatile uint32_t *used_ring;   /* {id, len}[] */
    uint32_t size;
    uint16_t avail_idx, used_idx;
};

/* Sets up queue `idx` in `mem` (descriptors, driver area, device area: a zeroed page each) with
 * the largest power of two up to `max_size` the device allows. Returns 0, `missing` when the
 * device has no such queue, or a reason. */
static inline const char *vm_queue(uint64_t base, struct vq *q, uint32_t idx, uint8_t (*mem)[4096],
                                   uint32_t max_size, uint32_t min_size, const char *missing) {
    vm_write(base, R_QUEUE_SEL, idx);
    uint32_t max = vm_read(base, R_QUEUE_NUM_MAX);
    if (!max) return missing;
    if (vm_read(base, R_QUEUE_READY)) return "queue-already-ready";
    uint32_t size = max_size;
    while (size > max) size >>= 1;  /* a power of two, at most the device's maximum */
    if (size < min_size) return "queue-too-small";
    for (int p = 0; p < 3; p++) zero(mem[p], 4096);
    q->desc = (volatile struct vq_desc *)(uintptr_t)mem[0];
    q->avail = (volatile uint16_t *)(uintptr_t)mem[1];
    q->used = (volatile uint16_t *)(uintptr_t)mem[2];
    q->used_ring = (volatile uint32_t *)(uintptr_t)(mem[2] + 4);
    q->size = size;
    q->avail_idx = q->used_idx = 0;
    uint64_t a[3] = {addr_of(mem[0]), addr_of(mem[1]), addr_of(mem[2])};
    vm_write(base, R_QUEUE_NUM, size);
    vm_write(base, R_QUEUE_DESC, (uint32_t)a[0]);
    vm_write(base, R_QUEUE_DESC + 4, (uint32_t)(a[0] >> 32));
    vm_write(base, R_QUEUE_DRIVER, (uint32_t)a[1]);
    vm_write(base, R_QUEUE_DRIVER + 4, (uint32_t)(a[1] >> 32));
    vm_write(base, R_QUEUE_DEVICE, (uint32_t)a[2]);
    vm_write(base, R_QUEUE_DEVICE + 4, (uint32_t)(a[2] >> 32));
    vm_write(base, R_QUEUE_READY, 1);
    return 0;
}

/* Writes `n` segments as one chain in descriptors first..first+n-1, linked in order. */
static inline void vq_chain(struct vq *q, uint32_t first, const struct seg *s, int n) {
    for (int i = 0; i < n; i++) {
        volatile struct vq_desc *e = &q->desc[first + (uint32_t)i];
        e->addr = s[i].addr;
        e->len = s[i].len;
        e->flags = (uint16_t)(s[i].flags | (i + 1 < n ? D_NEXT : 0));
        e->next = (uint16_t)(i + 1 < n ? first + (uint32_t)i + 1 : 0);
    }
}

/* Makes descriptor (chain) `head` available, without publishing the index. */
static inline void vq_avail_add(struct vq *q, uint16_t head) {
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    q->avail_idx++;
}
static inline void vq_avail_publish(struct vq *q) {
    barrier();
    q->avail[1] = q->avail_idx;
}

static inline int vq_has_used(const struct vq *q) { return q->used[1] != q->used_idx; }
/* Takes the next used element (there must be one). */
static inline void vq_used_take(struct vq *q, uint32_t *id, uint32_t *len) {
    barrier();
    uint32_t i = q->used_idx & (q->size - 1);
    *id = q->used_ring[2 * i];
    *len = q->used_ring[2 * i + 1];
    q->used_idx++;
}

#endif
