/* The probe's virtio-net driver: two polled split virtqueues (0 rx, 1 tx) on the first
 * virtio-mmio device with DeviceID 1, and just enough ARP, IPv4, ICMP and UDP to talk to the
 * host's kernel through the VMM's TAP device.
 *
 * probe.net=ping probe.ip=A.B.C.D probe.peer=A.B.C.D [probe.udp_tries=N]
 *   PROBE: net dev=N base=0x.. gsi=G features=0x.. mac=xx:xx:xx:xx:xx:xx status=S
 *          driver_features=0x.. max_pairs=P rx_size=R tx_size=T
 *   PROBE: net arp peer_mac=xx:xx:xx:xx:xx:xx tries=N
 *   PROBE: net ping seq=N reply=0|1 ttl=T            (three of them)
 *   PROBE: net udp sent=N tries=N
 *   PROBE: net udp got=<payload, the rest of the line>
 *   PROBE: net stats rx=.. tx=.. ...
 *   PROBE: net done
 * and `PROBE: net timeout <where>` / `PROBE: net failed <why>` when something does not come.
 *
 * probe.net=bad (see net_bad): hostile transmit chains, each reported as
 *   PROBE: net bad <case> used=0|1 len=N dev_status=0x.. isr=0x..
 * (the frames carry UDP payload "bad:<case>" to port 9997, so the host can tell which went
 * out); 1000 frames as fast as the ring takes them:
 *   PROBE: net bad flood sent=N drained=0|1 waits=N dev_status=0x..
 * then, after a reset, hostile receive buffers first in the rx ring, filled by the host's ARP
 * replies; per buffer (wrote/over: bytes changed inside/outside what the buffer allowed):
 *   PROBE: net bad rx_<case> used=0|1 len=N wrote=N over=N [hdr=xx:..] dev_status=0x..
 *   PROBE: net bad rx_recovered arp=0|1 tries=N dev_status=0x..
 * and finally, on the same device, one more ARP and ping:
 *   PROBE: net bad survived ping=0|1 arp=0|1 reinits=N dev_status=0x..
 * (reinits: resets it needed because the device asked for one or stopped answering).
 *
 * probe.bench=nettx probe.n=N: N UDP frames of 1472 payload bytes to the peer (port 9), as
 * fast as the tx ring takes them: PROBE: bench nettx n=N tsc=CYCLES bytes=1514 ...
 *
 * Every packet starts with the 12-byte virtio_net_hdr_v1, all zero from us (we negotiate
 * only VERSION_1, MAC and STATUS, so the device owes us whole frames with full checksums). */
#include "net.h"

#define puts_ probe_puts
#define putc_ probe_putc
#define put_hex probe_put_hex
#define put_dec probe_put_dec

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

#define ST_ACKNOWLEDGE 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 0x40u
#define ST_LIVE (ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK)

#define F_NET_MAC (1ull << 5)
#define F_NET_STATUS (1ull << 16)
#define F_VERSION_1 (1ull << 32)
#define NET_WANTED (F_VERSION_1 | F_NET_MAC | F_NET_STATUS)

#define D_NEXT 1
#define D_WRITE 2

#define Q_MAX 256
#define HDR_LEN 12                  /* virtio_net_hdr_v1 */
#define BUF_LEN 2048                /* an rx buffer: header + 1514 bytes and room to spare */
#define TX_RAW 8                    /* tx descriptors at the ring's end for net_bad's chains */
#define BIG_SEG 16000
#define BIG_SEGS 5                  /* net_bad's oversized frame: 80000 bytes */
#define PING_ID 0x7072
#define PING_LEN 56
#define UDP_OURS 9998
#define UDP_PEER 9999
#define UDP_BAD 9997
#define UDP_DISCARD 9

struct ndesc { uint64_t addr; uint32_t len; uint16_t flags, next; };

struct nq {
    volatile struct ndesc *desc;
    volatile uint16_t *avail;       /* flags, idx, ring[] */
    volatile uint16_t *used;        /* flags, idx */
    volatile uint32_t *used_ring;   /* {id, len}[] */
    uint32_t size;
    uint16_t avail_idx, used_idx;
};

static uint8_t net_qmem[2][3][4096] __attribute__((aligned(4096)));
static uint8_t net_rx_bufs[Q_MAX][BUF_LEN] __attribute__((aligned(64)));
static uint8_t net_tx_bufs[Q_MAX / 2][BUF_LEN] __attribute__((aligned(64)));  /* header + frame */
static uint8_t net_tx_hdrs[Q_MAX / 2][16] __attribute__((aligned(16)));       /* zero headers */
static uint8_t net_big[BIG_SEG * BIG_SEGS] __attribute__((aligned(64)));
static uint8_t net_canary[4][BUF_LEN] __attribute__((aligned(64)));   /* net_bad's rx buffers */

/* probe.net=bad's receive buffers, posted first when rx_hostile is set: the device cannot or
 * must not put a frame in any of them (a buffer outside RAM, in the MMIO gap, device-readable,
 * smaller than the header, the header alone, the header and less than a frame). */
#define RXH_CASES 6
static const char *const rxh_names[RXH_CASES] = {"rx_outside_ram", "rx_in_mmio_gap", "rx_readonly", "rx_tiny",
                                                 "rx_header_only", "rx_short"};
static void rxh_desc(uint32_t i, uint64_t *addr, uint32_t *len, uint16_t *flags) {
    /* rx_short: the header and 28 bytes, less than any frame the host sends (ARP: 42) */
    static const uint32_t lens[RXH_CASES] = {BUF_LEN, BUF_LEN, BUF_LEN, 8, HDR_LEN, HDR_LEN + 28};
    *len = lens[i];
    *flags = i == 2 ? 0 : D_WRITE;
    *addr = i == 0 ? 0x7f0000000000ull : i == 1 ? 0xd0000000ull : (uint64_t)(uintptr_t)net_canary[i - 2];
}

static struct net {
    int n;
    uint64_t base;
    uint32_t gsi;
    uint64_t offered, features;
    uint8_t mac[6];
    uint16_t status, max_pairs;
    struct nq rx, tx;
    uint32_t tx_slots, nfree;       /* tx slot s: descriptors 2s (header) and 2s+1 (frame) */
    uint16_t free_slots[Q_MAX / 2];
    uint32_t raw_base;              /* first of the TX_RAW descriptors */
    int raw_used;
    uint32_t raw_len;
    uint8_t ip[4], peer[4], peer_mac[6];
    int have_peer_mac;
    /* what the receive path saw */
    int reply_seq, reply_ok;
    uint8_t reply_ttl;
    int have_udp;
    uint32_t udp_len;
    char udp_got[128];
    uint64_t rx_frames, tx_frames, rx_hdr_odd, rx_short, rx_bad_id, rx_not_ours, ip_csum_bad, l4_csum_bad;
    uint64_t arp_replied, echo_replied, tx_bad_used;
    /* probe.net=bad's receive cases: rx descriptors 0..rx_hostile-1 are hostile buffers */
    uint32_t rx_hostile;
    int rxh_used[8];
    uint32_t rxh_len[8];
} nd;

static const uint8_t BCAST[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

static inline uint64_t rdtsc_(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#define barrier() __asm__ volatile("" ::: "memory")

static uint32_t nr(uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(nd.base + off); }
static void nw(uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(nd.base + off) = v; }
static uint8_t ncfg8(uint32_t off) { return *(volatile uint8_t *)(uintptr_t)(nd.base + R_CONFIG + off); }
static uint16_t ncfg16(uint32_t off) { return *(volatile uint16_t *)(uintptr_t)(nd.base + R_CONFIG + off); }

static void copy(void *d, const void *s, uint32_t n) {
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--) *p++ = *q++;
}
static void zero(void *d, uint32_t n) {
    volatile uint8_t *p = d;
    while (n--) *p++ = 0;
}
static int same(const void *a, const void *b, uint32_t n) {
    const uint8_t *p = a, *q = b;
    while (n--) if (*p++ != *q++) return 0;
    return 1;
}
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void put_mac(const uint8_t *m) {
    for (int i = 0; i < 6; i++) {
        if (i) putc_(':');
        putc_("0123456789abcdef"[m[i] >> 4]);
        putc_("0123456789abcdef"[m[i] & 15]);
    }
}

/* "A.B.C.D" into ip[4]; returns 0 when it is not one. */
static int parse_ip(const char *v, uint8_t *ip) {
    if (!v) return 0;
    for (int i = 0; i < 4; i++) {
        uint32_t n = 0, digits = 0;
        while (*v >= '0' && *v <= '9' && digits < 4) { n = n * 10 + (uint32_t)(*v++ - '0'); digits++; }
        if (!digits || n > 255) return 0;
        ip[i] = (uint8_t)n;
        if (i < 3 && *v++ != '.') return 0;
    }
    return 1;
}

/* The Internet checksum's running sum (big-endian 16-bit words) and its folded complement. */
static uint32_t sum16(const uint8_t *p, uint32_t n, uint32_t s) {
    for (; n > 1; p += 2, n -= 2) s += be16(p);
    if (n) s += (uint32_t)p[0] << 8;
    return s;
}
static uint16_t fold(uint32_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}
/* UDP's sum over the pseudo header and the datagram (`udp`, `len` bytes). */
static uint16_t udp_csum(const uint8_t *src, const uint8_t *dst, const uint8_t *udp, uint32_t len) {
    uint32_t s = sum16(src, 4, 0);
    s = sum16(dst, 4, s);
    s += 17 + len;
    return fold(sum16(udp, len, s));
}

/* ---- Queues ------------------------------------------------------------------------------ */

static void net_reset(void) {
    nw(R_STATUS, 0);
    for (int i = 0; i < 1000000 && nr(R_STATUS); i++) __asm__ volatile("pause");
}

static const char *queue_setup(struct nq *q, uint32_t idx) {
    nw(R_QUEUE_SEL, idx);
    uint32_t max = nr(R_QUEUE_NUM_MAX);
    if (!max) return idx ? "no-tx-queue" : "no-rx-queue";
    if (nr(R_QUEUE_READY)) return "queue-already-ready";
    uint32_t size = Q_MAX;
    while (size > max) size >>= 1;  /* a power of two, at most the device's maximum */
    for (int p = 0; p < 3; p++) zero(net_qmem[idx][p], 4096);
    q->desc = (volatile struct ndesc *)(uintptr_t)net_qmem[idx][0];
    q->avail = (volatile uint16_t *)(uintptr_t)net_qmem[idx][1];
    q->used = (volatile uint16_t *)(uintptr_t)net_qmem[idx][2];
    q->used_ring = (volatile uint32_t *)(uintptr_t)(net_qmem[idx][2] + 4);
    q->size = size;
    q->avail_idx = q->used_idx = 0;
    uint64_t a[3] = {(uint64_t)(uintptr_t)net_qmem[idx][0], (uint64_t)(uintptr_t)net_qmem[idx][1],
                     (uint64_t)(uintptr_t)net_qmem[idx][2]};
    nw(R_QUEUE_NUM, size);
    nw(R_QUEUE_DESC, (uint32_t)a[0]);
    nw(R_QUEUE_DESC + 4, (uint32_t)(a[0] >> 32));
    nw(R_QUEUE_DRIVER, (uint32_t)a[1]);
    nw(R_QUEUE_DRIVER + 4, (uint32_t)(a[1] >> 32));
    nw(R_QUEUE_DEVICE, (uint32_t)a[2]);
    nw(R_QUEUE_DEVICE + 4, (uint32_t)(a[2] >> 32));
    nw(R_QUEUE_READY, 1);
    return 0;
}

static void notify(uint32_t idx) {
    __asm__ volatile("mfence" ::: "memory");
    nw(R_QUEUE_NOTIFY, idx);
}

/* Makes descriptor (chain) `head` available, without publishing the index. */
static void avail_add(struct nq *q, uint16_t head) {
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    q->avail_idx++;
}
static void avail_publish(struct nq *q) {
    barrier();
    q->avail[1] = q->avail_idx;
}

/* Reset, features, both queues, DRIVER_OK, every rx buffer posted. Returns 0 or a reason. */
static const char *net_init(void) {
    net_reset();
    if (nr(R_MAGIC) != 0x74726976u || nr(R_VERSION) != 2 || nr(R_DEVICE_ID) != 1) return "not-virtio-net-v2";
    if (nr(R_STATUS)) return "reset-failed";
    nw(R_STATUS, ST_ACKNOWLEDGE);
    nw(R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
    nw(R_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = nr(R_DEVICE_FEATURES);
    nw(R_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = nr(R_DEVICE_FEATURES);
    nd.offered = hi << 32 | lo;
    nd.features = nd.offered & NET_WANTED;
    if (!(nd.features & F_VERSION_1)) return "no-version-1";
    nw(R_DRIVER_FEATURES_SEL, 0);
    nw(R_DRIVER_FEATURES, (uint32_t)nd.features);
    nw(R_DRIVER_FEATURES_SEL, 1);
    nw(R_DRIVER_FEATURES, (uint32_t)(nd.features >> 32));
    nw(R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    if (!(nr(R_STATUS) & ST_FEATURES_OK)) return "features-not-ok";
    const char *why = queue_setup(&nd.rx, 0);
    if (!why) why = queue_setup(&nd.tx, 1);
    if (why) return why;
    if (nd.tx.size < 2 * TX_RAW) return "tx-queue-too-small";
    nw(R_STATUS, ST_LIVE);
    if (nr(R_STATUS) != ST_LIVE) return "driver-ok-refused";

    uint32_t gen, tries = 0;
    do {
        gen = nr(R_CONFIG_GENERATION);
        for (int i = 0; i < 6; i++) nd.mac[i] = ncfg8((uint32_t)i);
        nd.status = ncfg16(6);
        nd.max_pairs = ncfg16(8);
    } while (gen != nr(R_CONFIG_GENERATION) && ++tries < 100);
    if (!(nd.features & F_NET_MAC)) { /* a locally administered address of our own */
        static const uint8_t own[6] = {0x06, 0, 0, 0, 0, 0x01};
        copy(nd.mac, own, 6);
    }

    /* rx: one device-writable buffer per descriptor, all of them posted (net_bad's hostile
     * ones first when it asks) */
    for (uint32_t i = 0; i < nd.rx.size; i++) {
        nd.rx.desc[i].addr = (uint64_t)(uintptr_t)net_rx_bufs[i];
        nd.rx.desc[i].len = BUF_LEN;
        nd.rx.desc[i].flags = D_WRITE;
        nd.rx.desc[i].next = 0;
        if (i < nd.rx_hostile) {
            uint64_t a;
            uint32_t l;
            uint16_t f;
            rxh_desc(i, &a, &l, &f);
            nd.rx.desc[i].addr = a;
            nd.rx.desc[i].len = l;
            nd.rx.desc[i].flags = f;
            nd.rxh_used[i] = 0;
            nd.rxh_len[i] = 0;
        }
        avail_add(&nd.rx, (uint16_t)i);
    }
    avail_publish(&nd.rx);
    notify(0);

    /* tx: slots of two descriptors below the raw ones */
    nd.raw_base = nd.tx.size - TX_RAW;
    nd.tx_slots = nd.raw_base / 2;
    nd.nfree = 0;
    for (uint32_t s = nd.tx_slots; s > 0; s--) nd.free_slots[nd.nfree++] = (uint16_t)(s - 1);
    for (uint32_t s = 0; s < nd.tx_slots; s++) {
        zero(net_tx_hdrs[s], 16);
        zero(net_tx_bufs[s], HDR_LEN);
    }
    nd.raw_used = 0;
    return 0;
}

/* Takes the tx queue's used elements: frees slots, notes a raw chain. Returns how many. */
static uint32_t tx_reclaim(void) {
    uint32_t n = 0;
    while (nd.tx.used[1] != nd.tx.used_idx) {
        barrier();
        uint32_t i = nd.tx.used_idx & (nd.tx.size - 1);
        uint32_t id = nd.tx.used_ring[2 * i], len = nd.tx.used_ring[2 * i + 1];
        nd.tx.used_idx++;
        n++;
        if (id == nd.raw_base) {
            nd.raw_used = 1;
            nd.raw_len = len;
        } else if (id < 2 * nd.tx_slots && !(id & 1) && nd.nfree < nd.tx_slots) {
            nd.free_slots[nd.nfree++] = (uint16_t)(id / 2);
        } else {
            nd.tx_bad_used++;
        }
    }
    return n;
}

/* Waits up to `ms` for a free tx slot; returns it, or -1. */
static int tx_slot(uint64_t ms) {
    uint64_t deadline = 0;
    for (uint32_t spin = 1; !nd.nfree; spin++) {
        if (tx_reclaim()) continue;
        if (!(spin & 1023)) {
            if (!deadline) deadline = probe_deadline_ms(ms);
            else if (rdtsc_() > deadline) return -1;
        }
        __asm__ volatile("pause");
    }
    return nd.free_slots[--nd.nfree];
}

/* Where slot `s`'s frame goes (after its header). */
static uint8_t *tx_frame(int s) { return net_tx_bufs[s] + HDR_LEN; }

/* Writes slot `s`'s chain for a frame of `len` bytes: two descriptors (header, frame) or one
 * (header and frame together). */
static void tx_chain(int s, uint32_t len, int one_desc) {
    volatile struct ndesc *d = &nd.tx.desc[2 * s];
    if (one_desc) {
        d->addr = (uint64_t)(uintptr_t)net_tx_bufs[s];
        d->len = HDR_LEN + len;
        d->flags = 0;
        d->next = 0;
    } else {
        d[0].addr = (uint64_t)(uintptr_t)net_tx_hdrs[s];
        d[0].len = HDR_LEN;
        d[0].flags = D_NEXT;
        d[0].next = (uint16_t)(2 * s + 1);
        d[1].addr = (uint64_t)(uintptr_t)tx_frame(s);
        d[1].len = len;
        d[1].flags = 0;
        d[1].next = 0;
    }
}

/* Makes slot `s`'s frame of `len` bytes available (see tx_chain), without notifying. */
static void tx_post(int s, uint32_t len, int one_desc) {
    if (len < 60) { zero(tx_frame(s) + len, 60 - len); len = 60; } /* Ethernet's minimum */
    tx_chain(s, len, one_desc);
    avail_add(&nd.tx, (uint16_t)(2 * s));
    nd.tx_frames++;
}
static void tx_kick(void) {
    avail_publish(&nd.tx);
    notify(1);
}

/* Waits up to `ms` until the device has used every posted tx chain; returns 0, or -1. */
static int tx_drain(uint64_t ms) {
    uint64_t deadline = probe_deadline_ms(ms);
    while (nd.tx.used_idx != nd.tx.avail_idx) {
        tx_reclaim();
        if (rdtsc_() > deadline) return -1;
        __asm__ volatile("pause");
    }
    return 0;
}

/* ---- Frames out -------------------------------------------------------------------------- */

static uint8_t *eth(uint8_t *f, const uint8_t *dst, uint16_t type) {
    copy(f, dst, 6);
    copy(f + 6, nd.mac, 6);
    put16(f + 12, type);
    return f + 14;
}

/* An IPv4 header (no options, DF) for `payload` bytes of protocol `proto`. */
static uint8_t *ipv4(uint8_t *p, uint8_t proto, const uint8_t *dst, uint32_t payload) {
    static uint16_t ident;
    p[0] = 0x45;
    p[1] = 0;
    put16(p + 2, (uint16_t)(20 + payload));
    put16(p + 4, ++ident);
    put16(p + 6, 0x4000);
    p[8] = 64;
    p[9] = proto;
    put16(p + 10, 0);
    copy(p + 12, nd.ip, 4);
    copy(p + 16, dst, 4);
    put16(p + 10, fold(sum16(p, 20, 0)));
    return p + 20;
}

/* Sends an ARP packet; returns 0, or -1 when no tx slot came free. */
static int send_arp(uint16_t op, const uint8_t *eth_dst, const uint8_t *tha, const uint8_t *tpa) {
    int s = tx_slot(1000);
    if (s < 0) return -1;
    uint8_t *f = tx_frame(s), *a = eth(f, eth_dst, 0x0806);
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    copy(a + 8, nd.mac, 6);
    copy(a + 14, nd.ip, 4);
    copy(a + 18, tha, 6);
    copy(a + 24, tpa, 4);
    tx_post(s, 14 + 28, 1); /* one descriptor: header and frame together */
    tx_kick();
    return 0;
}

static uint8_t ping_byte(uint32_t i) { return (uint8_t)(0x10 + i); } /* the echo payload: 10 11 12 ... */

static int send_echo(uint8_t type, const uint8_t *eth_dst, const uint8_t *ip_dst, uint16_t id, uint16_t seq,
                     const uint8_t *payload, uint32_t len) {
    int s = tx_slot(1000);
    if (s < 0) return -1;
    uint8_t *f = tx_frame(s), *ic = ipv4(eth(f, eth_dst, 0x0800), 1, ip_dst, 8 + len);
    ic[0] = type;
    ic[1] = 0;
    put16(ic + 2, 0);
    put16(ic + 4, id);
    put16(ic + 6, seq);
    for (uint32_t i = 0; i < len; i++) ic[8 + i] = payload ? payload[i] : ping_byte(i);
    put16(ic + 2, fold(sum16(ic, 8 + len, 0)));
    tx_post(s, 14 + 20 + 8 + len, 0);
    tx_kick();
    return 0;
}

/* Writes a UDP datagram into `f` (a frame); returns the frame's length. `csum`: fill in the
 * checksum (else 0, "none", which IPv4 allows). */
static uint32_t udp_frame(uint8_t *f, const uint8_t *eth_dst, const uint8_t *ip_dst, uint16_t sport, uint16_t dport,
                          const uint8_t *payload, uint32_t len, int csum) {
    uint8_t *u = ipv4(eth(f, eth_dst, 0x0800), 17, ip_dst, 8 + len);
    put16(u, sport);
    put16(u + 2, dport);
    put16(u + 4, (uint16_t)(8 + len));
    put16(u + 6, 0);
    if (payload) copy(u + 8, payload, len);
    if (csum) {
        uint16_t c = udp_csum(nd.ip, ip_dst, u, 8 + len);
        put16(u + 6, c ? c : 0xffff);
    }
    return 14 + 20 + 8 + len;
}

static int send_udp(const uint8_t *eth_dst, const uint8_t *ip_dst, uint16_t sport, uint16_t dport, const char *text) {
    uint32_t len = 0;
    while (text[len]) len++;
    int s = tx_slot(1000);
    if (s < 0) return -1;
    tx_post(s, udp_frame(tx_frame(s), eth_dst, ip_dst, sport, dport, (const uint8_t *)text, len, 1), 0);
    tx_kick();
    return 0;
}

/* ---- Frames in --------------------------------------------------------------------------- */

static void arp_in(const uint8_t *a, uint32_t n) {
    if (n < 28 || be16(a) != 1 || be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4) return;
    uint16_t op = be16(a + 6);
    const uint8_t *sha = a + 8, *spa = a + 14, *tpa = a + 24;
    if (same(spa, nd.peer, 4) && (op == 2 || same(tpa, nd.ip, 4))) {
        copy(nd.peer_mac, sha, 6);
        nd.have_peer_mac = 1;
    }
    if (op == 1 && same(tpa, nd.ip, 4)) {
        uint8_t mac[6], ip[4];
        copy(mac, sha, 6);
        copy(ip, spa, 4);
        if (send_arp(2, mac, mac, ip) == 0) nd.arp_replied++;
    }
}

static void icmp_in(const uint8_t *eth_src, const uint8_t *ip, const uint8_t *ic, uint32_t n) {
    if (n < 8) return;
    if (fold(sum16(ic, n, 0)) != 0) { nd.l4_csum_bad++; return; }
    if (ic[0] == 0 && ic[1] == 0 && be16(ic + 4) == PING_ID) { /* our echo, answered */
        int ok = n == 8 + PING_LEN;
        for (uint32_t i = 0; ok && i < PING_LEN; i++) ok = ic[8 + i] == ping_byte(i);
        nd.reply_seq = be16(ic + 6);
        nd.reply_ttl = ip[8];
        nd.reply_ok = ok;
    } else if (ic[0] == 8 && ic[1] == 0 && n <= 8 + 1472) { /* someone pings us: answer */
        uint8_t mac[6], src[4];
        copy(mac, eth_src, 6);
        copy(src, ip + 12, 4);
        if (send_echo(0, mac, src, be16(ic + 4), be16(ic + 6), ic + 8, n - 8) == 0) nd.echo_replied++;
    }
}

static void udp_in(const uint8_t *ip, const uint8_t *u, uint32_t n) {
    if (n < 8) return;
    uint32_t ulen = be16(u + 4);
    if (ulen < 8 || ulen > n) return;
    if (be16(u + 6) && udp_csum(ip + 12, ip + 16, u, ulen) != 0) { nd.l4_csum_bad++; return; }
    if (be16(u + 2) != UDP_OURS || nd.have_udp) return;
    uint32_t len = ulen - 8;
    if (len > sizeof(nd.udp_got) - 1) len = sizeof(nd.udp_got) - 1;
    for (uint32_t i = 0; i < len; i++) {
        uint8_t c = u[8 + i];
        nd.udp_got[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    nd.udp_got[len] = 0;
    nd.udp_len = ulen - 8;
    nd.have_udp = 1;
}

static void ip_in(const uint8_t *f, const uint8_t *p, uint32_t n) {
    if (n < 20 || (p[0] >> 4) != 4) return;
    uint32_t ihl = (p[0] & 15) * 4u, total = be16(p + 2);
    if (ihl < 20 || total < ihl || total > n) return;
    if (fold(sum16(p, ihl, 0)) != 0) { nd.ip_csum_bad++; return; }
    if (!same(p + 16, nd.ip, 4) || (be16(p + 6) & 0x3fff)) return; /* not ours, or a fragment */
    if (p[9] == 1) icmp_in(f + 6, p, p + ihl, total - ihl);
    else if (p[9] == 17) udp_in(p, p + ihl, total - ihl);
}

static void frame_in(const uint8_t *b, uint32_t len) {
    nd.rx_frames++;
    if (len < HDR_LEN + 14) { nd.rx_short++; return; }
    /* Without GUEST_CSUM/GSO: no flags, no GSO; num_buffers is 1 without MRG_RXBUF. */
    if (b[0] || b[1] || (b[10] | b[11] << 8) != 1) nd.rx_hdr_odd++;
    const uint8_t *f = b + HDR_LEN;
    uint32_t n = len - HDR_LEN;
    if (!same(f, nd.mac, 6) && !same(f, BCAST, 6)) { nd.rx_not_ours++; return; }
    uint16_t type = be16(f + 12);
    if (type == 0x0806) arp_in(f + 14, n - 14);
    else if (type == 0x0800) ip_in(f, f + 14, n - 14);
}

/* Takes every received frame, answers what needs answering and gives the buffers back.
 * Returns how many frames came. */
static uint32_t net_poll(void) {
    uint32_t n = 0;
    while (nd.rx.used[1] != nd.rx.used_idx) {
        barrier();
        uint32_t i = nd.rx.used_idx & (nd.rx.size - 1);
        uint32_t id = nd.rx.used_ring[2 * i], len = nd.rx.used_ring[2 * i + 1];
        nd.rx.used_idx++;
        n++;
        if (id >= nd.rx.size) { nd.rx_bad_id++; continue; }
        if (id < nd.rx_hostile && nd.rx.desc[id].addr != (uint64_t)(uintptr_t)net_rx_bufs[id]) {
            /* a hostile buffer came back: note it, post an ordinary one in its place */
            nd.rxh_used[id] = 1;
            nd.rxh_len[id] = len;
            nd.rx.desc[id].addr = (uint64_t)(uintptr_t)net_rx_bufs[id];
            nd.rx.desc[id].len = BUF_LEN;
            nd.rx.desc[id].flags = D_WRITE;
            avail_add(&nd.rx, (uint16_t)id);
            continue;
        }
        if (len > BUF_LEN) { nd.rx_bad_id++; len = BUF_LEN; }
        frame_in(net_rx_bufs[id], len);
        avail_add(&nd.rx, (uint16_t)id);
    }
    if (n) {
        avail_publish(&nd.rx);
        notify(0);
    }
    tx_reclaim();
    return n;
}

/* Polls until *flag is set or `ms` pass; returns whether it was set. */
static int wait_for(volatile int *flag, uint64_t ms) {
    uint64_t deadline = 0;
    for (uint32_t spin = 1; !*flag; spin++) {
        if (net_poll()) continue;
        if (!(spin & 255)) {
            if (!deadline) deadline = probe_deadline_ms(ms);
            else if (rdtsc_() > deadline) return *flag;
        }
        __asm__ volatile("pause");
    }
    return 1;
}

/* ---- probe.net=ping ---------------------------------------------------------------------- */

static void timeout(const char *where) {
    puts_("PROBE: net timeout ");
    puts_(where);
    puts_(" dev_status=");
    put_hex(nr(R_STATUS));
    puts_(" rx_used=");
    put_dec(nd.rx.used[1]);
    puts_(" tx_used=");
    put_dec(nd.tx.used[1]);
    puts_(" tx_avail=");
    put_dec(nd.tx.avail_idx);
    putc_('\n');
}

/* ARP for the peer: up to `tries` requests a second apart. Returns the tries used, or 0. */
static int arp_peer(int tries) {
    nd.have_peer_mac = 0;
    static const uint8_t none[6] = {0, 0, 0, 0, 0, 0};
    for (int t = 1; t <= tries; t++) {
        if (send_arp(1, BCAST, none, nd.peer)) return 0;
        if (wait_for(&nd.have_peer_mac, 1000)) return t;
    }
    return 0;
}

/* One echo request with sequence `seq`; waits up to `ms` for its reply. Returns 1 if it came
 * (with our payload), else 0. */
static int ping(uint16_t seq, uint64_t ms) {
    nd.reply_seq = -1;
    nd.reply_ok = 0;
    if (send_echo(8, nd.peer_mac, nd.peer, PING_ID, seq, 0, PING_LEN)) return 0;
    uint64_t deadline = 0;
    for (uint32_t spin = 1; nd.reply_seq != seq; spin++) {
        if (net_poll()) continue;
        if (!(spin & 255)) {
            if (!deadline) deadline = probe_deadline_ms(ms);
            else if (rdtsc_() > deadline) return 0;
        }
        __asm__ volatile("pause");
    }
    return nd.reply_ok;
}

static void net_line(void) {
    puts_("PROBE: net dev=");
    put_dec((uint64_t)nd.n);
    puts_(" base=");
    put_hex(nd.base);
    puts_(" gsi=");
    put_dec(nd.gsi);
    puts_(" features=");
    put_hex(nd.offered);
    puts_(" mac=");
    put_mac(nd.mac);
    puts_(" status=");
    put_dec(nd.status);
    puts_(" driver_features=");
    put_hex(nd.features);
    puts_(" max_pairs=");
    put_dec(nd.max_pairs);
    puts_(" rx_size=");
    put_dec(nd.rx.size);
    puts_(" tx_size=");
    put_dec(nd.tx.size);
    putc_('\n');
}

static void stats_line(void) {
    uint32_t isr = nr(R_INTERRUPT_STATUS);
    nw(R_INTERRUPT_ACK, isr);
    puts_("PROBE: net stats rx=");
    put_dec(nd.rx_frames);
    puts_(" tx=");
    put_dec(nd.tx_frames);
    puts_(" rx_hdr_odd=");
    put_dec(nd.rx_hdr_odd);
    puts_(" rx_short=");
    put_dec(nd.rx_short);
    puts_(" rx_bad_id=");
    put_dec(nd.rx_bad_id);
    puts_(" rx_not_ours=");
    put_dec(nd.rx_not_ours);
    puts_(" ip_csum_bad=");
    put_dec(nd.ip_csum_bad);
    puts_(" l4_csum_bad=");
    put_dec(nd.l4_csum_bad);
    puts_(" arp_replied=");
    put_dec(nd.arp_replied);
    puts_(" echo_replied=");
    put_dec(nd.echo_replied);
    puts_(" tx_bad_used=");
    put_dec(nd.tx_bad_used);
    puts_(" isr=");
    put_hex(isr);
    puts_(" dev_status=");
    put_hex(nr(R_STATUS));
    putc_('\n');
}

static void net_ping(uint32_t udp_tries) {
    int tries = arp_peer(3);
    if (!tries) { timeout("arp"); return; }
    puts_("PROBE: net arp peer_mac=");
    put_mac(nd.peer_mac);
    puts_(" tries=");
    put_dec((uint64_t)tries);
    putc_('\n');

    for (uint16_t seq = 1; seq <= 3; seq++) {
        int ok = ping(seq, 2000);
        if (!ok) timeout(nd.reply_seq == seq ? "ping-payload" : "ping");
        puts_("PROBE: net ping seq=");
        put_dec(seq);
        puts_(" reply=");
        put_dec((uint64_t)ok);
        puts_(" ttl=");
        put_dec(ok ? nd.reply_ttl : 0);
        putc_('\n');
    }

    /* UDP to the peer, sent again every two seconds until its answer comes (at most
     * `udp_tries` times: probe.udp_tries, default 5). */
    nd.have_udp = 0;
    int sent = 0;
    for (int t = 1; t <= (int)udp_tries && !nd.have_udp; t++) {
        if (send_udp(nd.peer_mac, nd.peer, UDP_OURS, UDP_PEER, "hello from the probe")) break;
        sent = t;
        wait_for(&nd.have_udp, 2000);
    }
    puts_("PROBE: net udp sent=");
    put_dec(sizeof("hello from the probe") - 1);
    puts_(" tries=");
    put_dec((uint64_t)sent);
    putc_('\n');
    if (!nd.have_udp) timeout("udp");
    else {
        puts_("PROBE: net udp len=");
        put_dec(nd.udp_len);
        putc_('\n');
        puts_("PROBE: net udp got=");
        puts_(nd.udp_got);
        putc_('\n');
    }
    if (tx_drain(1000)) timeout("tx-drain");
    stats_line();
}

/* ---- probe.net=bad: hostile transmit chains ---------------------------------------------- */

struct rawd { uint64_t addr; uint32_t len; uint16_t flags; };

/* Posts descriptors raw_base.. as one chain (`n` of them, linked in order), waits up to a
 * second for the device to use it (less once it asks for a reset) and reports. Returns
 * whether the device wants a reset. */
static int bad_chain(const char *name, const struct rawd *d, int n) {
    if (tx_drain(1000)) timeout("bad-drain");
    uint32_t isr0 = nr(R_INTERRUPT_STATUS);
    nw(R_INTERRUPT_ACK, isr0);
    for (int i = 0; i < n; i++) {
        volatile struct ndesc *e = &nd.tx.desc[nd.raw_base + (uint32_t)i];
        e->addr = d[i].addr;
        e->len = d[i].len;
        e->flags = (uint16_t)(d[i].flags | (i + 1 < n ? D_NEXT : 0));
        e->next = (uint16_t)(i + 1 < n ? nd.raw_base + (uint32_t)i + 1 : 0);
    }
    nd.raw_used = 0;
    nd.raw_len = 0;
    avail_add(&nd.tx, (uint16_t)nd.raw_base);
    tx_kick();
    uint64_t end = probe_deadline_ms(1000), grace = 0;
    for (;;) {
        tx_reclaim();
        if (nd.raw_used) break;
        uint64_t now = rdtsc_();
        if (now > end || (grace && now > grace)) break;
        if (!grace && (nr(R_STATUS) & ST_NEEDS_RESET)) grace = probe_deadline_ms(50);
        __asm__ volatile("pause");
    }
    uint32_t st = nr(R_STATUS), isr = nr(R_INTERRUPT_STATUS);
    nw(R_INTERRUPT_ACK, isr);
    puts_("PROBE: net bad ");
    puts_(name);
    puts_(" used=");
    put_dec((uint64_t)nd.raw_used);
    puts_(" len=");
    put_dec(nd.raw_len);
    puts_(" dev_status=");
    put_hex(st);
    puts_(" isr=");
    put_hex(isr);
    putc_('\n');
    return (st & ST_NEEDS_RESET) || !nd.raw_used;
}

/* A UDP frame to UDP_BAD with payload "bad:<name>" into `f`, padded with zeroes to `pad`
 * bytes of UDP payload; returns the frame's length. */
static uint32_t bad_frame(uint8_t *f, const char *name, uint32_t pad) {
    uint32_t len = 4;
    while (name[len - 4] && len < 64) len++;
    if (pad < len) pad = len;
    zero(f, 14 + 20 + 8 + pad);
    copy(f + 42, "bad:", 4);
    copy(f + 46, name, len - 4);
    return udp_frame(f, BCAST, nd.peer, UDP_OURS, UDP_BAD, 0, pad, 0);
}

static int bad_reinit(int *reinits, const char *after) {
    (*reinits)++;
    const char *why = net_init();
    if (!why) return 0;
    puts_("PROBE: net bad reinit_failed after=");
    puts_(after);
    puts_(" why=");
    puts_(why);
    puts_(" dev_status=");
    put_hex(nr(R_STATUS));
    putc_('\n');
    return 1;
}

static void net_bad(void) {
    static uint8_t raw_hdr[16] __attribute__((aligned(16)));
    static uint8_t raw_frame[256] __attribute__((aligned(64)));
    zero(raw_hdr, sizeof(raw_hdr));
    uint64_t hdr = (uint64_t)(uintptr_t)raw_hdr, fr = (uint64_t)(uintptr_t)raw_frame;
    const uint64_t far = 0x7f0000000000ull;
    int reinits = 0;
    /* hdr: what the virtio-net header says (flags, gso_type, gso_size, csum_start, csum_offset) */
    struct { const char *name; int n; struct rawd d[BIG_SEGS + 1]; uint32_t frame_pad; uint16_t hdr[5]; } cases[] = {
        /* 80000 bytes of frame over five descriptors: more than any frame can be */
        {"oversize", BIG_SEGS + 1, {{hdr, HDR_LEN, 0}}, 0, {0}},
        /* the virtio-net header and nothing else */
        {"header_only", 1, {{hdr, HDR_LEN, 0}}, 0, {0}},
        /* a header of 8 bytes and no frame */
        {"short_header", 1, {{hdr, 8, 0}}, 0, {0}},
        /* the frame device-writable */
        {"writable", 2, {{hdr, HDR_LEN, 0}, {fr, 0, D_WRITE}}, 18, {0}},
        /* the frame outside guest RAM, or in the MMIO gap (the exit device's page) */
        {"outside_ram", 2, {{hdr, HDR_LEN, 0}, {far, 100, 0}}, 0, {0}},
        {"in_mmio_gap", 2, {{hdr, HDR_LEN, 0}, {0xd0000000ull, 100, 0}}, 0, {0}},
        /* legal: the header split over two descriptors, the frame in a third (spec 2.7.4:
         * the device must not assume a layout); the frame should go out */
        {"split_header", 3, {{hdr, 5, 0}, {hdr + 5, HDR_LEN - 5, 0}, {fr, 0, 0}}, 18, {0}},
        /* header fields we did not negotiate (no CSUM, no HOST_TSO4): NEEDS_CSUM with a
         * checksum place far beyond the frame; TCPv4 segmentation of a UDP datagram into
         * 1-byte segments */
        {"hdr_csum_bogus", 2, {{hdr, HDR_LEN, 0}, {fr, 0, 0}}, 18, {1, 0, 0, 0xfff0, 0xfff0}},
        {"hdr_gso_bogus", 2, {{hdr, HDR_LEN, 0}, {fr, 0, 0}}, 18, {0, 1, 1, 0, 0}},
    };
    for (uint32_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        if (cases[c].d[1].addr == fr && cases[c].d[1].len == 0)
            cases[c].d[1].len = bad_frame(raw_frame, cases[c].name, cases[c].frame_pad);
        if (cases[c].n == 3 && cases[c].d[2].len == 0)
            cases[c].d[2].len = bad_frame(raw_frame, cases[c].name, cases[c].frame_pad);
        if (c == 0) {
            bad_frame(net_big, "oversize", BIG_SEG * BIG_SEGS - 42);
            for (int i = 0; i < BIG_SEGS; i++) {
                cases[0].d[1 + i].addr = (uint64_t)(uintptr_t)(net_big + i * BIG_SEG);
                cases[0].d[1 + i].len = BIG_SEG;
                cases[0].d[1 + i].flags = 0;
            }
        }
        zero(raw_hdr, sizeof(raw_hdr));
        raw_hdr[0] = (uint8_t)cases[c].hdr[0];
        raw_hdr[1] = (uint8_t)cases[c].hdr[1];
        for (int i = 2; i < 5; i++) { /* le16 gso_size, csum_start, csum_offset at 4, 6, 8 */
            raw_hdr[2 * i] = (uint8_t)cases[c].hdr[i];
            raw_hdr[2 * i + 1] = (uint8_t)(cases[c].hdr[i] >> 8);
        }
        if (bad_chain(cases[c].name, cases[c].d, cases[c].n) && bad_reinit(&reinits, cases[c].name)) return;
    }

    /* 1000 frames as fast as the ring takes them: a notify each, completions taken only when
     * no slot is free, the rx queue left alone meanwhile. */
    uint32_t flood = 1000, waits = 0, posted = 0;
    for (; posted < flood; posted++) {
        if (!nd.nfree) waits++;
        int s = tx_slot(2000);
        if (s < 0) break;
        char name[16] = "flood-";
        uint32_t k = 6, v = posted;
        char digits[8];
        int nd_ = 0;
        do { digits[nd_++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (nd_) name[k++] = digits[--nd_];
        name[k] = 0;
        tx_post(s, bad_frame(tx_frame(s), name, 0), 0);
        tx_kick();
    }
    int drained = tx_drain(5000) == 0;
    uint32_t st = nr(R_STATUS);
    puts_("PROBE: net bad flood sent=");
    put_dec(posted);
    puts_(" drained=");
    put_dec((uint64_t)drained);
    puts_(" waits=");
    put_dec(waits);
    puts_(" dev_status=");
    put_hex(st);
    putc_('\n');
    if (((st & ST_NEEDS_RESET) || !drained) && bad_reinit(&reinits, "flood")) return;

    /* Receive: a fresh start with the hostile buffers first in the ring, then ARP requests
     * until a reply gets through (each reply, and anything else the host sends, takes the next
     * buffer). The device must give every buffer back without writing where it may not. */
    for (int i = 0; i < 4; i++)
        for (uint32_t j = 0; j < BUF_LEN; j++) net_canary[i][j] = 0xa5;
    nd.rx_hostile = RXH_CASES;
    const char *why = net_init();
    if (why) {
        puts_("PROBE: net bad reinit_failed after=rx-setup why=");
        puts_(why);
        putc_('\n');
        return;
    }
    static const uint8_t none[6] = {0, 0, 0, 0, 0, 0};
    int tries = 0;
    nd.have_peer_mac = 0;
    while (tries < 15 && !nd.have_peer_mac) {
        tries++;
        if (send_arp(1, BCAST, none, nd.peer)) break;
        wait_for(&nd.have_peer_mac, 300);
    }
    for (uint32_t i = 0; i < RXH_CASES; i++) {
        uint64_t a;
        uint32_t l, over = 0, wrote = 0;
        uint16_t f;
        rxh_desc(i, &a, &l, &f);
        if (i >= 2) { /* what the device wrote where it was allowed to, and beyond */
            uint32_t allowed = f & D_WRITE ? l : 0;
            for (uint32_t j = 0; j < BUF_LEN; j++) {
                if (net_canary[i - 2][j] == 0xa5) continue;
                if (j < allowed) wrote++;
                else over++;
            }
        }
        puts_("PROBE: net bad ");
        puts_(rxh_names[i]);
        puts_(" used=");
        put_dec((uint64_t)nd.rxh_used[i]);
        puts_(" len=");
        put_dec(nd.rxh_len[i]);
        puts_(" wrote=");
        put_dec(wrote);
        puts_(" over=");
        put_dec(over);
        if (i >= 2 && nd.rxh_len[i]) { /* the header it wrote */
            puts_(" hdr=");
            for (uint32_t j = 0; j < HDR_LEN && j < l; j++) {
                if (j) putc_(':');
                putc_("0123456789abcdef"[net_canary[i - 2][j] >> 4]);
                putc_("0123456789abcdef"[net_canary[i - 2][j] & 15]);
            }
        }
        puts_(" dev_status=");
        put_hex(nr(R_STATUS));
        putc_('\n');
    }
    nd.rx_hostile = 0;
    st = nr(R_STATUS);
    puts_("PROBE: net bad rx_recovered arp=");
    put_dec((uint64_t)nd.have_peer_mac);
    puts_(" tries=");
    put_dec((uint64_t)tries);
    puts_(" dev_status=");
    put_hex(st);
    putc_('\n');
    if (((st & ST_NEEDS_RESET) || !nd.have_peer_mac) && bad_reinit(&reinits, "rx")) return;

    /* Still a network device: ARP and one ping. */
    int arp = arp_peer(3) != 0;
    int ok = arp && ping(1, 2000);
    puts_("PROBE: net bad survived ping=");
    put_dec((uint64_t)ok);
    puts_(" arp=");
    put_dec((uint64_t)arp);
    puts_(" reinits=");
    put_dec((uint64_t)reinits);
    puts_(" dev_status=");
    put_hex(nr(R_STATUS));
    putc_('\n');
    stats_line();
}

/* ---- Entry points ------------------------------------------------------------------------ */

/* Finds and starts the first virtio-net device with probe.ip/probe.peer; returns 0 or a reason. */
static const char *net_start(const char *cmdline, uint64_t rsdp_hint) {
    zero(&nd, sizeof(nd));
    nd.n = probe_virtio_find(cmdline, rsdp_hint, 1, &nd.base, &nd.gsi);
    if (nd.n < 0) return "no-device";
    if (!parse_ip(probe_cmdline_arg(cmdline, "probe.ip"), nd.ip)) {
        static const uint8_t ip[4] = {10, 0, 2, 15};
        copy(nd.ip, ip, 4);
    }
    if (!parse_ip(probe_cmdline_arg(cmdline, "probe.peer"), nd.peer)) {
        static const uint8_t peer[4] = {10, 0, 2, 1};
        copy(nd.peer, peer, 4);
    }
    return net_init();
}

void net_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    const char *why = net_start(cmdline, rsdp_hint);
    if (why) {
        puts_("PROBE: net failed ");
        puts_(why);
        if (nd.n >= 0) {
            puts_(" dev_status=");
            put_hex(nr(R_STATUS));
        }
        putc_('\n');
        if (nd.n >= 0) net_reset();
        return;
    }
    net_line();
    if (probe_word_is(mode, "bad")) net_bad();
    else if (probe_word_is(mode, "ping")) {
        const char *tries = probe_cmdline_arg(cmdline, "probe.udp_tries");
        net_ping(tries && probe_parse_dec(tries) ? (uint32_t)probe_parse_dec(tries) : 5);
    }
    else puts_("PROBE: net failed unknown-mode\n");
    net_reset();
    puts_("PROBE: net done\n");
}

void net_bench(const char *cmdline, uint64_t rsdp_hint, uint64_t n) {
    const char *tsrc;
    uint64_t khz = probe_tsc_khz(&tsrc);
    puts_("PROBE: tsc khz=");
    put_dec(khz);
    puts_(" source=");
    puts_(tsrc);
    putc_('\n');
    const char *why = net_start(cmdline, rsdp_hint);
    if (why) {
        puts_("PROBE: bench nettx failed ");
        puts_(why);
        putc_('\n');
        if (nd.n >= 0) net_reset();
        return;
    }
    /* The peer's MAC if it answers ARP, else broadcast. */
    if (!arp_peer(3)) copy(nd.peer_mac, BCAST, 6);
    if (tx_drain(1000)) { puts_("PROBE: bench nettx failed tx-drain\n"); net_reset(); return; }
    /* Every slot's frame and chain once: 1472 bytes of UDP payload, no UDP checksum. Per frame
     * only its avail entry is written then (every guest instruction counts where the CPU is
     * emulated, as on PVM). */
    uint32_t flen = 0;
    for (uint32_t s = 0; s < nd.tx_slots; s++) {
        uint8_t *f = tx_frame((int)s);
        for (uint32_t i = 0; i < 1472; i++) f[42 + i] = (uint8_t)i;
        flen = udp_frame(f, nd.peer_mac, nd.peer, UDP_OURS, UDP_DISCARD, 0, 1472, 0);
        tx_chain((int)s, flen, 0);
    }
    uint64_t issued = 0, done = 0, waits = 0, kicks = 0, kick_tsc = 0, wait_tsc = 0;
    int timed_out = 0;
    uint64_t t0 = rdtsc_();
    while (done < n) {
        int posted = 0;
        while (issued < n && nd.nfree) {
            avail_add(&nd.tx, (uint16_t)(2 * nd.free_slots[--nd.nfree]));
            issued++;
            posted = 1;
        }
        if (posted) {
            uint64_t k0 = rdtsc_();
            tx_kick();
            kick_tsc += rdtsc_() - k0;
            kicks++;
        }
        uint32_t got = tx_reclaim();
        if (!got) {
            uint64_t w0 = rdtsc_();
            waits++;
            uint64_t deadline = 0;
            for (uint32_t spin = 1; !(got = tx_reclaim()); spin++) {
                if (!(spin & 1023)) {
                    if (!deadline) deadline = probe_deadline_ms(10000);
                    else if (rdtsc_() > deadline) break;
                }
                __asm__ volatile("pause");
            }
            wait_tsc += rdtsc_() - w0;
            if (!got) { timed_out = 1; break; }
        }
        done += got;
    }
    uint64_t cycles = rdtsc_() - t0;
    net_reset();
    puts_("PROBE: bench nettx ");
    if (timed_out) {
        puts_("failed timeout done=");
        put_dec(done);
        putc_('\n');
        return;
    }
    puts_("n=");
    put_dec(n);
    puts_(" tsc=");
    put_dec(cycles);
    puts_(" bytes=");
    put_dec(flen);
    puts_(" waits=");
    put_dec(waits);
    puts_(" kicks=");
    put_dec(kicks);
    puts_(" kick_tsc=");
    put_dec(kick_tsc);
    puts_(" wait_tsc=");
    put_dec(wait_tsc);
    puts_(" slots=");
    put_dec(nd.tx_slots);
    puts_(" errors=");
    put_dec(nd.tx_bad_used);
    putc_('\n');
}
