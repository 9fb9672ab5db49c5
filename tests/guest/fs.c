/* The probe's virtio-fs driver (virtio 1.2, 5.11): FUSE requests over two polled split
 * virtqueues (0 hiprio, 1 the request queue) of a virtio-mmio device with DeviceID 26, one
 * request at a time, in the Linux uapi <linux/fuse.h> layouts of protocol 7.31.
 *
 * probe.fs=list: every virtio-fs device, set up (DRIVER_OK) and reset again, one line each:
 *   PROBE: fs dev=N base=0x.. gsi=G features=0x.. tag=<tag> num_queues=Q status=0x..
 *          hiprio_size=H queue_size=R
 *   PROBE: fs list count=N
 *
 * probe.fs=test [probe.fs_rw=1]: the first virtio-fs device, on the share
 * tests/test_virtiofs_probe.py makes (hello.txt, dir/inner.txt, big.bin, the symlinks escape
 * -> /etc and up -> ../outside-secret). Without probe.fs_rw=1 the share is read-only.
 *   PROBE: fs dev=N ...                                      (as for list)
 *   PROBE: fs init error=E major=M minor=N max_write=W flags=0x..
 *   PROBE: fs lookup name=hello.txt error=E nodeid=N size=S mode=0x..
 *   PROBE: fs getattr error=E size=S mode=0x..
 *   PROBE: fs read name=hello.txt error=E len=L data=<text>  (OPEN read-only, READ 4096 at 0)
 *   PROBE: fs release name=hello.txt error=E
 *   PROBE: fs bigread error=E bytes=N reads=R fnv=0x..      (big.bin in 128 KiB READs)
 *   PROBE: fs read name=dir/inner.txt error=E len=L data=<text>
 *   PROBE: fs release name=dir/inner.txt error=E
 *   PROBE: fs readdir error=E count=N names=<name>,<name>,... (the root, READDIRs of 4096)
 * read-write (probe.fs_rw=1): CREATE new.txt, WRITE, RELEASE; MKDIR newdir; RENAME new.txt to
 * newdir/moved.txt:
 *   PROBE: fs create error=E nodeid=N
 *   PROBE: fs write error=E size=N release=E
 *   PROBE: fs mkdir error=E nodeid=N
 *   PROBE: fs rename error=E
 * read-only: each must be refused (OPEN hello.txt write-only, CREATE, MKDIR, UNLINK hello.txt):
 *   PROBE: fs ro create=E mkdir=E unlink=E open_wr=E
 * ways out of the share, each refused (see t_escapes for the cases):
 *   PROBE: fs escape case=C error=E nodeid=N [lookup=E mode=0x..] [up1=N up2=N] [data=<text>]
 * hostile requests (see t_bad), each answered (used=1), or the device asks for a reset:
 *   PROBE: fs bad case=C used=0|1 len=L [error=E] dev_status=0x..
 *   PROBE: fs bad reinit after=C error=E     (the device reset and set up again, INIT's error)
 *   PROBE: fs bad case=handle_exhaustion opened=N error=E
 *   PROBE: fs bad case=after_exhaustion error=E release_errors=N
 *   PROBE: fs bad case=forget used=0|1 len=L lookups=N lookup_errors=N getattr_after=E
 * and at the end:
 *   PROBE: fs destroy error=E
 *   PROBE: fs done
 *
 * E is 0 or a negative errno (the reply's fuse_out_header.error), -71 (EPROTO) when the reply
 * was malformed, which is also reported as
 *   PROBE: fs malformed where=<request> used_id=I len=L out_len=O unique_ok=0|1 error=E
 * nodeid= is what the reply's entry gave (0 when none) or else the node the request was about.
 * data= is the rest of the line: the first 256 bytes the device gave, printable ASCII as it is,
 * "\n" for a newline, "\\" for a backslash and "\xHH" for any other byte. When the device does
 * not use a request within 5 s: `PROBE: fs timeout <where> ...` and the test stops there.
 * Without a device: `PROBE: fs failed no-device`; `PROBE: fs failed <why> dev=N dev_status=0x..`
 * when it cannot be set up, `PROBE: fs failed reinit-<why> dev_status=0x..` when it cannot be
 * set up again after a hostile request. */
#include "fs.h"
#include "report.h"


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

#define VIRTIO_ID_FS 26
#define F_VERSION_1 (1ull << 32)

#define D_NEXT 1
#define D_WRITE 2

#define Q_MAX 256
#define Q_HIPRIO 0
#define Q_REQUEST 1
#define CHAIN_MAX 4                 /* descriptors in the longest chain we make */
#define TAG_LEN 36

#define FS_MS 5000                  /* how long a request may take */
#define BAD_MS 2000                 /* ... a hostile one, before we reset the device */
#define FS_TIMEOUT 1                /* not an errno: the device did not answer, the test stops */
#define EPROTO_ 71
#define SMALL_READ 4096
#define BIG_READ 131072
#define BIG_SPLIT 5000              /* where the data of every other big READ is cut in two */
#define BIG_READS_MAX 64            /* 8 MiB: big.bin is 1 MiB + 123 bytes */
#define DIR_READS_MAX 16
#define EXHAUST_MAX 70000
#define LOOKUPS 1000
#define FAR 0x7f0000000000ull       /* far beyond guest RAM */
#define BAD_NODE 0xdeadbeefull

#define ROOT 1
#define O_RDONLY_ 0
#define O_WRONLY_ 1
#define O_CREAT_ 0x40
#define O_DIRECTORY_ 0x10000

enum {
    OP_LOOKUP = 1, OP_FORGET = 2, OP_GETATTR = 3, OP_READLINK = 5, OP_MKDIR = 9, OP_UNLINK = 10, OP_RENAME = 12,
    OP_LINK = 13, OP_OPEN = 14, OP_READ = 15, OP_WRITE = 16, OP_RELEASE = 18, OP_INIT = 26, OP_OPENDIR = 27,
    OP_READDIR = 28, OP_RELEASEDIR = 29, OP_CREATE = 35, OP_DESTROY = 38, OP_UNKNOWN = 9999,
};

/* <linux/fuse.h> */
struct fuse_in_header { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid; uint16_t total_extlen, padding; };
struct fuse_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct fuse_attr {
    uint64_t ino, size, blocks, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct fuse_entry_out {
    uint64_t nodeid, generation, entry_valid, attr_valid;
    uint32_t entry_valid_nsec, attr_valid_nsec;
    struct fuse_attr attr;
};
struct fuse_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy; struct fuse_attr attr; };
struct fuse_getattr_in { uint32_t getattr_flags, dummy; uint64_t fh; };
struct fuse_init_in { uint32_t major, minor, max_readahead, flags; };  /* 7.31's; 7.36 added 48 bytes */
struct fuse_init_out {
    uint32_t major, minor, max_readahead, flags;
    uint16_t max_background, congestion_threshold;
    uint32_t max_write, time_gran;
    uint16_t max_pages, map_alignment;
    uint32_t flags2, unused[7];
};
struct fuse_open_in { uint32_t flags, open_flags; };
struct fuse_open_out { uint64_t fh; uint32_t open_flags, backing_id; };
struct fuse_create_in { uint32_t flags, mode, umask, open_flags; };
struct fuse_mkdir_in { uint32_t mode, umask; };
/* fuse_read_in and fuse_write_in (rw_flags: read_flags, write_flags) */
struct fuse_io_in { uint64_t fh, offset; uint32_t size, rw_flags; uint64_t lock_owner; uint32_t flags, padding; };
struct fuse_write_out { uint32_t size, padding; };
struct fuse_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct fuse_rename_in { uint64_t newdir; };
struct fuse_link_in { uint64_t oldnodeid; };
struct fuse_forget_in { uint64_t nlookup; };
struct fuse_dirent { uint64_t ino, off; uint32_t namelen, type; };  /* + name, padded to 8 bytes */

_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_io_in) == 40, "fuse_read_in");
_Static_assert(sizeof(struct fuse_release_in) == 24, "fuse_release_in");
_Static_assert(sizeof(struct fuse_dirent) == 24, "fuse_dirent");

#define IN_HDR ((uint32_t)sizeof(struct fuse_in_header))
#define OUT_HDR ((uint32_t)sizeof(struct fuse_out_header))

struct fdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct seg { uint64_t addr; uint32_t len; uint16_t flags; };

struct fq {
    volatile struct fdesc *desc;
    volatile uint16_t *avail;       /* flags, idx, ring[] */
    volatile uint16_t *used;        /* flags, idx */
    volatile uint32_t *used_ring;   /* {id, len}[] */
    uint32_t size;
    uint16_t avail_idx, used_idx;
};

static uint8_t fs_qmem[2][3][4096] __attribute__((aligned(4096)));
static uint8_t fs_req[512] __attribute__((aligned(64)));                    /* the request */
static uint8_t fs_rep[OUT_HDR + SMALL_READ] __attribute__((aligned(64)));   /* its reply */
static uint8_t fs_big[OUT_HDR + BIG_READ] __attribute__((aligned(4096)));   /* a big READ's reply */
static uint64_t fs_fhs[EXHAUST_MAX];                                        /* handle_exhaustion's */

static struct fs {
    int n;
    uint64_t base;
    uint32_t gsi;
    uint64_t offered;
    char tag[TAG_LEN + 1];
    uint32_t num_queues, status;
    struct fq q[2];
    int rw;
    struct fuse_init_out init;
    /* the request being made, and what came back */
    uint32_t op, req_len;
    uint64_t nodeid, unique;
    uint32_t used_id;
    uint32_t rlen;                  /* reply bytes after the fuse_out_header */
} fs;

static inline uint64_t rdtsc_(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#define barrier() __asm__ volatile("" ::: "memory")

static uint32_t fr(uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(fs.base + off); }
static void fw(uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(fs.base + off) = v; }
static uint8_t fcfg8(uint32_t off) { return *(volatile uint8_t *)(uintptr_t)(fs.base + R_CONFIG + off); }

static void copy(void *d, const void *s, uint32_t n) {
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--) *p++ = *q++;
}
static void zero(void *d, uint32_t n) {
    volatile uint8_t *p = d;
    while (n--) *p++ = 0;
}
static uint64_t addr_of(const void *p) { return (uint64_t)(uintptr_t)p; }

/* ---- The device and its queues ----------------------------------------------------------- */

static void fs_reset(void) {
    fw(R_STATUS, 0);
    for (int i = 0; i < 1000000 && fr(R_STATUS); i++) __asm__ volatile("pause");
}

static const char *queue_setup(uint32_t idx) {
    struct fq *q = &fs.q[idx];
    fw(R_QUEUE_SEL, idx);
    uint32_t max = fr(R_QUEUE_NUM_MAX);
    if (!max) return idx == Q_HIPRIO ? "no-hiprio-queue" : "no-request-queue";
    if (fr(R_QUEUE_READY)) return "queue-already-ready";
    uint32_t size = Q_MAX;
    while (size > max) size >>= 1;  /* a power of two, at most the device's maximum */
    if (size < CHAIN_MAX) return "queue-too-small";
    for (int p = 0; p < 3; p++) zero(fs_qmem[idx][p], 4096);
    q->desc = (volatile struct fdesc *)(uintptr_t)fs_qmem[idx][0];
    q->avail = (volatile uint16_t *)(uintptr_t)fs_qmem[idx][1];
    q->used = (volatile uint16_t *)(uintptr_t)fs_qmem[idx][2];
    q->used_ring = (volatile uint32_t *)(uintptr_t)(fs_qmem[idx][2] + 4);
    q->size = size;
    q->avail_idx = q->used_idx = 0;
    uint64_t a[3] = {addr_of(fs_qmem[idx][0]), addr_of(fs_qmem[idx][1]), addr_of(fs_qmem[idx][2])};
    fw(R_QUEUE_NUM, size);
    fw(R_QUEUE_DESC, (uint32_t)a[0]);
    fw(R_QUEUE_DESC + 4, (uint32_t)(a[0] >> 32));
    fw(R_QUEUE_DRIVER, (uint32_t)a[1]);
    fw(R_QUEUE_DRIVER + 4, (uint32_t)(a[1] >> 32));
    fw(R_QUEUE_DEVICE, (uint32_t)a[2]);
    fw(R_QUEUE_DEVICE + 4, (uint32_t)(a[2] >> 32));
    fw(R_QUEUE_READY, 1);
    return 0;
}

/* Reset, VERSION_1 alone, both queues, DRIVER_OK, the configuration read. Returns 0 or a reason. */
static const char *fs_setup(void) {
    fs_reset();
    if (fr(R_MAGIC) != 0x74726976u || fr(R_VERSION) != 2 || fr(R_DEVICE_ID) != VIRTIO_ID_FS) return "not-virtio-fs-v2";
    if (fr(R_STATUS)) return "reset-failed";
    fw(R_STATUS, ST_ACKNOWLEDGE);
    fw(R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
    fw(R_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = fr(R_DEVICE_FEATURES);
    fw(R_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = fr(R_DEVICE_FEATURES);
    fs.offered = hi << 32 | lo;
    if (!(fs.offered & F_VERSION_1)) return "no-version-1";
    fw(R_DRIVER_FEATURES_SEL, 0);
    fw(R_DRIVER_FEATURES, 0);
    fw(R_DRIVER_FEATURES_SEL, 1);
    fw(R_DRIVER_FEATURES, (uint32_t)(F_VERSION_1 >> 32));
    fw(R_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    if (!(fr(R_STATUS) & ST_FEATURES_OK)) return "features-not-ok";
    const char *why = queue_setup(Q_HIPRIO);
    if (!why) why = queue_setup(Q_REQUEST);
    if (why) return why;
    fw(R_STATUS, ST_LIVE);
    fs.status = fr(R_STATUS);
    if (fs.status != ST_LIVE) return "driver-ok-refused";

    uint32_t gen, tries = 0;
    do {
        gen = fr(R_CONFIG_GENERATION);
        for (uint32_t i = 0; i < TAG_LEN; i++) fs.tag[i] = (char)fcfg8(i);
        fs.num_queues = fr(R_CONFIG + TAG_LEN);
    } while (gen != fr(R_CONFIG_GENERATION) && ++tries < 100);
    fs.tag[TAG_LEN] = 0;
    for (uint32_t i = 0; i < TAG_LEN && fs.tag[i]; i++)  /* one word on the report line */
        if (fs.tag[i] <= ' ' || fs.tag[i] >= 0x7f) fs.tag[i] = '?';
    return 0;
}

static void fs_line(void) {
    put_kv_dec("PROBE: fs dev=", (uint64_t)fs.n);
    put_kv_hex(" base=", fs.base);
    put_kv_dec(" gsi=", fs.gsi);
    put_kv_hex(" features=", fs.offered);
    puts_(" tag=");
    puts_(fs.tag);
    put_kv_dec(" num_queues=", fs.num_queues);
    put_kv_hex(" status=", fs.status);
    put_kv_dec(" hiprio_size=", fs.q[Q_HIPRIO].size);
    put_kv_dec(" queue_size=", fs.q[Q_REQUEST].size);
    putc_('\n');
}

/* Posts `n` segments as one chain (descriptors 0..n-1: one request at a time) on queue `qi`
 * and waits up to `ms` for the device to use it; with `grace`, only 50 ms more once the device
 * asks for a reset. Returns the used length (fs.used_id: the used id), or -1. */
static int64_t fs_chain(uint32_t qi, const struct seg *s, int n, uint64_t ms, int grace) {
    struct fq *q = &fs.q[qi];
    for (int i = 0; i < n; i++) {
        q->desc[i].addr = s[i].addr;
        q->desc[i].len = s[i].len;
        q->desc[i].flags = (uint16_t)(s[i].flags | (i + 1 < n ? D_NEXT : 0));
        q->desc[i].next = (uint16_t)(i + 1 < n ? i + 1 : 0);
    }
    q->avail[2 + (q->avail_idx & (q->size - 1))] = 0;
    q->avail_idx++;
    barrier();
    q->avail[1] = q->avail_idx;
    __asm__ volatile("mfence" ::: "memory");
    fw(R_QUEUE_NOTIFY, qi);
    uint64_t end = probe_deadline_ms(ms), stop = 0;
    while (q->used[1] == q->used_idx) {
        uint64_t now = rdtsc_();
        if (now > end || (stop && now > stop)) return -1;
        if (grace && !stop && (fr(R_STATUS) & ST_NEEDS_RESET)) stop = probe_deadline_ms(50);
        __asm__ volatile("pause");
    }
    barrier();
    uint32_t i = q->used_idx & (q->size - 1);
    fs.used_id = q->used_ring[2 * i];
    uint32_t len = q->used_ring[2 * i + 1];
    q->used_idx++;
    return len;
}

static void fs_timeout(const char *where) {
    puts_("PROBE: fs timeout ");
    puts_(where);
    put_kv_hex(" dev_status=", fr(R_STATUS));
    put_kv_dec(" used=", fs.q[Q_REQUEST].used[1]);
    put_kv_dec(" avail=", fs.q[Q_REQUEST].avail_idx);
    putc_('\n');
}

/* ---- Requests ---------------------------------------------------------------------------- */

/* Starts a request: its in-arguments follow with req_add and req_name. */
static void req_begin(uint32_t opcode, uint64_t nodeid) {
    fs.op = opcode;
    fs.nodeid = nodeid;
    fs.req_len = IN_HDR;
}
static void req_add(const void *p, uint32_t n) {
    copy(fs_req + fs.req_len, p, n);
    fs.req_len += n;
}
static void req_name(const char *name) { req_add(name, slen(name) + 1); }
/* The fuse_in_header, saying `len` bytes (the request's own length but for hostile ones). */
static void req_header(uint32_t len) {
    struct fuse_in_header h = {len, fs.op, ++fs.unique, fs.nodeid, 0, 0, 1, 0, 0};
    copy(fs_req, &h, IN_HDR);
}

/* Sends the request with its reply going to `w` (the fuse_out_header at the start of w[0],
 * which holds at least that). Returns the reply's error (fs.rlen: the bytes after the header)
 * or FS_TIMEOUT. */
static int fs_send(const char *where, const struct seg *w, int nw) {
    struct seg s[CHAIN_MAX];
    fs.rlen = 0;
    req_header(fs.req_len);
    s[0] = (struct seg){addr_of(fs_req), fs.req_len, 0};
    uint64_t room = 0;
    for (int i = 0; i < nw; i++) {
        s[1 + i] = w[i];
        room += w[i].len;
    }
    int64_t used = fs_chain(Q_REQUEST, s, 1 + nw, FS_MS, 0);
    if (used < 0) {
        fs_timeout(where);
        return FS_TIMEOUT;
    }
    struct fuse_out_header o;
    copy(&o, (const void *)(uintptr_t)w[0].addr, OUT_HDR);
    int unique_ok = o.unique == fs.unique;
    if (fs.used_id != 0 || used < OUT_HDR || (uint64_t)used > room || o.len != used || !unique_ok || o.error > 0 ||
        o.error < -4095) {
        puts_("PROBE: fs malformed where=");
        puts_(where);
        put_kv_dec(" used_id=", fs.used_id);
        put_kv_dec(" len=", (uint64_t)used);
        put_kv_dec(" out_len=", o.len);
        put_kv_dec(" unique_ok=", (uint64_t)unique_ok);
        put_kv_err(" error=", o.error);
        putc_('\n');
        return -EPROTO_;
    }
    if (!o.error) fs.rlen = (uint32_t)used - OUT_HDR;
    return o.error;
}

/* The request with its reply to fs_rep. */
static int fs_call(const char *where) {
    struct seg w = {addr_of(fs_rep), sizeof(fs_rep), D_WRITE};
    return fs_send(where, &w, 1);
}

/* The reply's first `n` bytes into `d` (zeroes where the reply was shorter, or an error). */
static void reply_take(void *d, uint32_t n) {
    uint32_t have = fs.rlen < n ? fs.rlen : n;
    copy(d, fs_rep + OUT_HDR, have);
    zero((uint8_t *)d + have, n - have);
}
static const uint8_t *reply_data(void) { return fs_rep + OUT_HDR; }

static int fs_init(void) {
    struct fuse_init_in in = {7, 31, BIG_READ, 0};
    req_begin(OP_INIT, 0);
    req_add(&in, sizeof(in));
    int e = fs_call("init");
    reply_take(&fs.init, sizeof(fs.init));
    return e;
}

static int op_lookup(uint64_t parent, const char *name, struct fuse_entry_out *e) {
    req_begin(OP_LOOKUP, parent);
    req_name(name);
    int r = fs_call("lookup");
    reply_take(e, sizeof(*e));
    return r;
}

static int op_getattr(uint64_t node, struct fuse_attr_out *a) {
    struct fuse_getattr_in in = {0, 0, 0};
    req_begin(OP_GETATTR, node);
    req_add(&in, sizeof(in));
    int r = fs_call("getattr");
    reply_take(a, sizeof(*a));
    return r;
}

/* OPEN or OPENDIR */
static int op_open(uint32_t opcode, uint64_t node, uint32_t flags, uint64_t *fh) {
    struct fuse_open_in in = {flags, 0};
    struct fuse_open_out out;
    req_begin(opcode, node);
    req_add(&in, sizeof(in));
    int r = fs_call(opcode == OP_OPEN ? "open" : "opendir");
    reply_take(&out, sizeof(out));
    *fh = out.fh;
    return r;
}

/* RELEASE or RELEASEDIR */
static int op_release(uint32_t opcode, uint64_t node, uint64_t fh) {
    struct fuse_release_in in = {fh, 0, 0, 0};
    req_begin(opcode, node);
    req_add(&in, sizeof(in));
    return fs_call(opcode == OP_RELEASE ? "release" : "releasedir");
}

/* READ or READDIR of up to SMALL_READ bytes: the data at reply_data(), fs.rlen bytes. */
static int op_read(uint32_t opcode, uint64_t node, uint64_t fh, uint64_t off) {
    struct fuse_io_in in = {fh, off, SMALL_READ, 0, 0, 0, 0};
    req_begin(opcode, node);
    req_add(&in, sizeof(in));
    return fs_call(opcode == OP_READ ? "read" : "readdir");
}

static int op_readlink(uint64_t node) {
    req_begin(OP_READLINK, node);
    return fs_call("readlink");
}

static int op_write(uint64_t node, uint64_t fh, const char *text, uint32_t *written) {
    uint32_t n = slen(text);
    struct fuse_io_in in = {fh, 0, n, 0, 0, O_WRONLY_, 0};
    struct fuse_write_out out;
    req_begin(OP_WRITE, node);
    req_add(&in, sizeof(in));
    req_add(text, n);
    int r = fs_call("write");
    reply_take(&out, sizeof(out));
    *written = out.size;
    return r;
}

static int op_create(uint64_t parent, const char *name, uint32_t flags, uint32_t mode, struct fuse_entry_out *e,
                     uint64_t *fh) {
    struct fuse_create_in in = {flags, mode, 0, 0};
    struct { struct fuse_entry_out e; struct fuse_open_out o; } out;
    req_begin(OP_CREATE, parent);
    req_add(&in, sizeof(in));
    req_name(name);
    int r = fs_call("create");
    reply_take(&out, sizeof(out));
    *e = out.e;
    *fh = out.o.fh;
    return r;
}

static int op_mkdir(uint64_t parent, const char *name, uint32_t mode, struct fuse_entry_out *e) {
    struct fuse_mkdir_in in = {mode, 0};
    req_begin(OP_MKDIR, parent);
    req_add(&in, sizeof(in));
    req_name(name);
    int r = fs_call("mkdir");
    reply_take(e, sizeof(*e));
    return r;
}

static int op_unlink(uint64_t parent, const char *name) {
    req_begin(OP_UNLINK, parent);
    req_name(name);
    return fs_call("unlink");
}

static int op_rename(uint64_t parent, const char *name, uint64_t newdir, const char *newname) {
    struct fuse_rename_in in = {newdir};
    req_begin(OP_RENAME, parent);
    req_add(&in, sizeof(in));
    req_name(name);
    req_name(newname);
    return fs_call("rename");
}

static int op_link(uint64_t node, uint64_t newparent, const char *newname, struct fuse_entry_out *e) {
    struct fuse_link_in in = {node};
    req_begin(OP_LINK, newparent);
    req_add(&in, sizeof(in));
    req_name(newname);
    int r = fs_call("link");
    reply_take(e, sizeof(*e));
    return r;
}

/* ---- probe.fs=test ----------------------------------------------------------------------- */

/* OPEN `node` read-only, READ SMALL_READ bytes at 0, RELEASE: the read and release lines
 * (`err`: the lookup's, when it failed). Returns FS_TIMEOUT or 0. */
static int read_file(const char *label, uint64_t node, int err) {
    uint64_t fh = 0;
    int e = err ? err : op_open(OP_OPEN, node, O_RDONLY_, &fh);
    int opened = !e;
    if (opened) e = op_read(OP_READ, node, fh, 0);
    if (e == FS_TIMEOUT) return e;
    uint32_t n = opened && !e ? fs.rlen : 0;
    puts_("PROBE: fs read name=");
    puts_(label);
    put_kv_err(" error=", e);
    put_kv_dec(" len=", n);
    end_line(reply_data(), n);
    if (!opened) return 0;
    e = op_release(OP_RELEASE, node, fh);
    if (e == FS_TIMEOUT) return e;
    puts_("PROBE: fs release name=");
    puts_(label);
    put_kv_err(" error=", e);
    putc_('\n');
    return 0;
}

static int t_hello(uint64_t *hello) {
    struct fuse_entry_out e;
    struct fuse_attr_out a;
    int err = op_lookup(ROOT, "hello.txt", &e);
    if (err == FS_TIMEOUT) return err;
    puts_("PROBE: fs lookup name=hello.txt");
    put_kv_err(" error=", err);
    put_kv_dec(" nodeid=", e.nodeid);
    put_kv_dec(" size=", e.attr.size);
    put_kv_hex(" mode=", e.attr.mode);
    putc_('\n');
    *hello = e.nodeid;
    int g = op_getattr(e.nodeid, &a);
    if (g == FS_TIMEOUT) return g;
    put_kv_err("PROBE: fs getattr error=", g);
    put_kv_dec(" size=", a.attr.size);
    put_kv_hex(" mode=", a.attr.mode);
    putc_('\n');
    return read_file("hello.txt", e.nodeid, err);
}

/* big.bin in READs of BIG_READ bytes until one comes back empty: every other reply in one
 * descriptor (header and data), the others in three (the header, the data cut at BIG_SPLIT). */
static int t_bigread(void) {
    struct fuse_entry_out e;
    uint64_t fh = 0, bytes = 0, h = FNV_INIT;
    uint32_t reads = 0;
    int err = op_lookup(ROOT, "big.bin", &e);
    if (!err) err = op_open(OP_OPEN, e.nodeid, O_RDONLY_, &fh);
    int opened = !err;
    while (!err && reads < BIG_READS_MAX) {
        struct fuse_io_in in = {fh, bytes, BIG_READ, 0, 0, 0, 0};
        req_begin(OP_READ, e.nodeid);
        req_add(&in, sizeof(in));
        uint64_t b = addr_of(fs_big);
        struct seg whole[1] = {{b, OUT_HDR + BIG_READ, D_WRITE}};
        struct seg split[3] = {{b, OUT_HDR, D_WRITE}, {b + OUT_HDR, BIG_SPLIT, D_WRITE},
                               {b + OUT_HDR + BIG_SPLIT, BIG_READ - BIG_SPLIT, D_WRITE}};
        err = reads & 1 ? fs_send("bigread", split, 3) : fs_send("bigread", whole, 1);
        reads++;
        if (err || !fs.rlen) break;
        h = fnv1a(h, fs_big + OUT_HDR, fs.rlen);
        bytes += fs.rlen;
    }
    if (opened && err != FS_TIMEOUT) {
        int r = op_release(OP_RELEASE, e.nodeid, fh);
        if (!err) err = r;
    }
    if (err == FS_TIMEOUT) return err;
    put_kv_err("PROBE: fs bigread error=", err);
    put_kv_dec(" bytes=", bytes);
    put_kv_dec(" reads=", reads);
    put_kv_hex(" fnv=", h);
    putc_('\n');
    return 0;
}

static int t_inner(void) {
    struct fuse_entry_out e;
    int err = op_lookup(ROOT, "dir", &e);
    if (!err) err = op_lookup(e.nodeid, "inner.txt", &e);
    if (err == FS_TIMEOUT) return err;
    return read_file("dir/inner.txt", e.nodeid, err);
}

/* OPENDIR the root, READDIR (4096 bytes at a time) until a reply has no entry, RELEASEDIR. */
static int t_readdir(void) {
    static char names[2048];
    uint32_t nl = 0, count = 0;
    uint64_t fh = 0, off = 0;
    int err = op_open(OP_OPENDIR, ROOT, O_RDONLY_ | O_DIRECTORY_, &fh);
    int opened = !err;
    for (uint32_t r = 0; !err && r < DIR_READS_MAX; r++) {
        err = op_read(OP_READDIR, ROOT, fh, off);
        uint32_t p = 0, before = count;
        while (!err && p + sizeof(struct fuse_dirent) <= fs.rlen) {
            struct fuse_dirent d;
            copy(&d, reply_data() + p, sizeof(d));
            const uint8_t *name = reply_data() + p + sizeof(d);
            if (d.namelen > fs.rlen - p - sizeof(d)) { err = -EPROTO_; break; }
            if (nl + d.namelen + 1 < sizeof(names)) {  /* the name (one word) and a comma */
                for (uint32_t i = 0; i < d.namelen; i++) {
                    char c = (char)name[i];
                    names[nl++] = c <= ' ' || c >= 0x7f || c == ',' ? '?' : c;
                }
                names[nl++] = ',';
            }
            count++;
            off = d.off;
            p += (uint32_t)(sizeof(d) + d.namelen + 7) & ~7u;
        }
        if (count == before) break;
    }
    if (opened && err != FS_TIMEOUT) {
        int r = op_release(OP_RELEASEDIR, ROOT, fh);
        if (!err) err = r;
    }
    if (err == FS_TIMEOUT) return err;
    if (nl) nl--;  /* the last comma */
    names[nl] = 0;
    put_kv_err("PROBE: fs readdir error=", err);
    put_kv_dec(" count=", count);
    puts_(" names=");
    puts_(names);
    putc_('\n');
    return 0;
}

static int t_write(void) {
    static const char text[] = "written by the guest\n";
    struct fuse_entry_out e, d;
    uint64_t fh = 0;
    uint32_t written = 0;
    int err = op_create(ROOT, "new.txt", O_WRONLY_ | O_CREAT_, 0644, &e, &fh);
    if (err == FS_TIMEOUT) return err;
    put_kv_err("PROBE: fs create error=", err);
    put_kv_dec(" nodeid=", e.nodeid);
    putc_('\n');
    int rel = 0;
    if (!err) {
        err = op_write(e.nodeid, fh, text, &written);
        if (err == FS_TIMEOUT) return err;
        rel = op_release(OP_RELEASE, e.nodeid, fh);
        if (rel == FS_TIMEOUT) return rel;
    }
    put_kv_err("PROBE: fs write error=", err);
    put_kv_dec(" size=", written);
    put_kv_err(" release=", rel);
    putc_('\n');
    err = op_mkdir(ROOT, "newdir", 0755, &d);
    if (err == FS_TIMEOUT) return err;
    put_kv_err("PROBE: fs mkdir error=", err);
    put_kv_dec(" nodeid=", d.nodeid);
    putc_('\n');
    err = op_rename(ROOT, "new.txt", d.nodeid, "moved.txt");
    if (err == FS_TIMEOUT) return err;
    put_kv_err("PROBE: fs rename error=", err);
    putc_('\n');
    return 0;
}

/* A read-only share: OPEN for writing, CREATE, MKDIR and UNLINK, each to be refused (EROFS).
 * Whatever opens anyway is released. */
static int t_readonly(uint64_t hello) {
    struct fuse_entry_out e;
    uint64_t fh = 0, cfh = 0;
    int open_wr = op_open(OP_OPEN, hello, O_WRONLY_, &fh);
    if (open_wr == FS_TIMEOUT || (!open_wr && op_release(OP_RELEASE, hello, fh) == FS_TIMEOUT)) return FS_TIMEOUT;
    int create = op_create(ROOT, "new.txt", O_WRONLY_ | O_CREAT_, 0644, &e, &cfh);
    if (create == FS_TIMEOUT || (!create && op_release(OP_RELEASE, e.nodeid, cfh) == FS_TIMEOUT)) return FS_TIMEOUT;
    int mkdir = op_mkdir(ROOT, "newdir", 0755, &e);
    if (mkdir == FS_TIMEOUT) return mkdir;
    int unlink = op_unlink(ROOT, "hello.txt");
    if (unlink == FS_TIMEOUT) return unlink;
    put_kv_err("PROBE: fs ro create=", create);
    put_kv_err(" mkdir=", mkdir);
    put_kv_err(" unlink=", unlink);
    put_kv_err(" open_wr=", open_wr);
    putc_('\n');
    return 0;
}

static void esc_begin(const char *name, int err, uint64_t nodeid) {
    puts_("PROBE: fs escape case=");
    puts_(name);
    put_kv_err(" error=", err);
    put_kv_dec(" nodeid=", nodeid);
}

/* LOOKUP a symlink in the root and OPEN it: the OPEN must fail (error= is its error, or the
 * lookup's when that failed). If it opens, what a READ gives is shown, then it is released. */
static int symlink_open(const char *name, const char *link) {
    struct fuse_entry_out e;
    uint64_t fh = 0;
    int lookup = op_lookup(ROOT, link, &e);
    int err = lookup ? lookup : op_open(OP_OPEN, e.nodeid, O_RDONLY_, &fh);
    int opened = !err;
    if (opened) err = op_read(OP_READ, e.nodeid, fh, 0);
    if (err == FS_TIMEOUT) return err;
    esc_begin(name, opened ? 0 : err, e.nodeid);
    put_kv_err(" lookup=", lookup);
    put_kv_hex(" mode=", e.attr.mode);
    end_line(reply_data(), fs.rlen);
    if (opened && op_release(OP_RELEASE, e.nodeid, fh) == FS_TIMEOUT) return FS_TIMEOUT;
    return 0;
}

/* Ways out of the share; every one must be refused:
 *   dotdot            LOOKUP ".." in the root (the root itself, nodeid 1, is fine too)
 *   slash_name        LOOKUP "../outside-secret": a name with a '/'
 *   abs_symlink_open  LOOKUP "escape" (-> /etc), OPEN it
 *   readlink          READLINK "escape": the target, in data= (a guest resolves it itself)
 *   rel_symlink_open  LOOKUP "up" (-> ../outside-secret), OPEN it
 *   dotdot_chain      LOOKUP "dir", ".." from there (up1=), ".." again (up2=), then
 *                     "outside-secret" from where that got (error=, nodeid=: that lookup's)
 *   bad_nodeid        LOOKUP "hello.txt" in nodeid 0xdeadbeef
 *   zero_nodeid       GETATTR nodeid 0
 *   bad_fh            READ hello.txt with fh 0xdeadbeef
 *   hardlink_inside   (read-write only) LINK hello.txt as "hl" in the root: allowed
 *   rename_bad_dir    RENAME hello.txt into nodeid 0xdeadbeef */
static int t_escapes(uint64_t hello) {
    struct fuse_entry_out e;
    struct fuse_attr_out a;
    int err = op_lookup(ROOT, "..", &e);
    if (err == FS_TIMEOUT) return err;
    esc_begin("dotdot", err, e.nodeid);
    end_line(0, 0);

    err = op_lookup(ROOT, "../outside-secret", &e);
    if (err == FS_TIMEOUT) return err;
    esc_begin("slash_name", err, e.nodeid);
    end_line(0, 0);

    if (symlink_open("abs_symlink_open", "escape") == FS_TIMEOUT) return FS_TIMEOUT;

    err = op_lookup(ROOT, "escape", &e);
    if (!err) err = op_readlink(e.nodeid);
    if (err == FS_TIMEOUT) return err;
    esc_begin("readlink", err, e.nodeid);
    end_line(reply_data(), fs.rlen);

    if (symlink_open("rel_symlink_open", "up") == FS_TIMEOUT) return FS_TIMEOUT;

    uint64_t at = ROOT, up[2] = {0, 0};
    err = op_lookup(ROOT, "dir", &e);
    if (!err) at = e.nodeid;
    for (int i = 0; i < 2 && err != FS_TIMEOUT; i++) {
        err = op_lookup(at, "..", &e);
        if (!err) at = up[i] = e.nodeid;
    }
    if (err != FS_TIMEOUT) err = op_lookup(at, "outside-secret", &e);
    if (err == FS_TIMEOUT) return err;
    esc_begin("dotdot_chain", err, e.nodeid);
    put_kv_dec(" up1=", up[0]);
    put_kv_dec(" up2=", up[1]);
    end_line(0, 0);

    err = op_lookup(BAD_NODE, "hello.txt", &e);
    if (err == FS_TIMEOUT) return err;
    esc_begin("bad_nodeid", err, e.nodeid);
    end_line(0, 0);

    err = op_getattr(0, &a);
    if (err == FS_TIMEOUT) return err;
    esc_begin("zero_nodeid", err, 0);
    end_line(0, 0);

    err = op_read(OP_READ, hello, BAD_NODE, 0);
    if (err == FS_TIMEOUT) return err;
    esc_begin("bad_fh", err, hello);
    end_line(reply_data(), fs.rlen);

    if (fs.rw) {
        err = op_link(hello, ROOT, "hl", &e);
        if (err == FS_TIMEOUT) return err;
        esc_begin("hardlink_inside", err, e.nodeid);
        end_line(0, 0);
    }

    err = op_rename(ROOT, "hello.txt", BAD_NODE, "hello.txt");
    if (err == FS_TIMEOUT) return err;
    esc_begin("rename_bad_dir", err, BAD_NODE);
    end_line(0, 0);
    return 0;
}

/* One hostile chain on the request queue (its header from req_header), reported; the device is
 * set up again (reset, features, queues, INIT) when it asks for a reset or did not answer.
 * error= is shown when a reply header for this request came back. Returns FS_TIMEOUT when the
 * device could not be set up again, else 0. */
static int bad_case(const char *name, const struct seg *s, int n) {
    for (uint32_t i = 0; i < OUT_HDR; i++) fs_rep[i] = 0xff;
    int64_t used = fs_chain(Q_REQUEST, s, n, BAD_MS, 1);
    uint32_t st = fr(R_STATUS);
    struct fuse_out_header o;
    copy(&o, fs_rep, OUT_HDR);
    puts_("PROBE: fs bad case=");
    puts_(name);
    put_kv_dec(" used=", used >= 0);
    put_kv_dec(" len=", used >= 0 ? (uint64_t)used : 0);
    if (used >= OUT_HDR && o.unique == fs.unique) put_kv_err(" error=", o.error);
    put_kv_hex(" dev_status=", st);
    putc_('\n');
    if (used >= 0 && !(st & ST_NEEDS_RESET)) return 0;
    const char *why = fs_setup();
    int err = why ? 0 : fs_init();
    if (why) {
        puts_("PROBE: fs failed reinit-");
        puts_(why);
        put_kv_hex(" dev_status=", fr(R_STATUS));
        putc_('\n');
        return FS_TIMEOUT;
    }
    if (err == FS_TIMEOUT) return err;
    puts_("PROBE: fs bad reinit after=");
    puts_(name);
    put_kv_err(" error=", err);
    putc_('\n');
    return 0;
}

/* Hostile requests, each answered or leading to a reset:
 *   len_too_big        LOOKUP hello.txt whose header says 4096 bytes more than the chain has
 *   len_too_small      ... whose header says 20 bytes (less than itself)
 *   no_reply_buf       READLINK "escape": the 40-byte header alone, no device-writable part
 *                      (the device must still use it: len=0)
 *   unknown_opcode     opcode 9999 (-38, ENOSYS)
 *   unterminated_name  LOOKUP "hello.txt" without its NUL (the chain ends there)
 *   outside_ram        LOOKUP whose name's descriptor is at 0x7f0000000000
 *   outside_ram_reply  LOOKUP hello.txt with the reply's descriptor there
 * then handle_exhaustion (OPEN hello.txt until refused, every handle released, one more OPEN)
 * and forget (1000 LOOKUPs of hello.txt, one FORGET of them all on the hiprio queue). */
static int t_bad(void) {
    struct fuse_entry_out e;
    struct seg s[3];
    uint64_t req = addr_of(fs_req);
    struct seg reply = {addr_of(fs_rep), sizeof(fs_rep), D_WRITE};
    int err = op_lookup(ROOT, "escape", &e);
    if (err == FS_TIMEOUT) return err;

    req_begin(OP_LOOKUP, ROOT);
    req_name("hello.txt");
    req_header(fs.req_len + 4096);
    s[0] = (struct seg){req, fs.req_len, 0};
    s[1] = reply;
    if (bad_case("len_too_big", s, 2)) return FS_TIMEOUT;

    req_header(20);
    if (bad_case("len_too_small", s, 2)) return FS_TIMEOUT;

    req_begin(OP_READLINK, e.nodeid);
    req_header(IN_HDR);
    s[0].len = IN_HDR;
    if (bad_case("no_reply_buf", s, 1)) return FS_TIMEOUT;

    req_begin(OP_UNKNOWN, ROOT);
    req_header(IN_HDR);
    if (bad_case("unknown_opcode", s, 2)) return FS_TIMEOUT;

    req_begin(OP_LOOKUP, ROOT);
    req_add("hello.txt", 9);
    for (uint32_t i = fs.req_len; i < fs.req_len + 64; i++) fs_req[i] = 'x';  /* no NUL after it either */
    req_header(fs.req_len);
    s[0].len = fs.req_len;
    if (bad_case("unterminated_name", s, 2)) return FS_TIMEOUT;

    req_begin(OP_LOOKUP, ROOT);
    req_header(IN_HDR + 10);
    s[0].len = IN_HDR;
    s[1] = (struct seg){FAR, 10, 0};
    s[2] = reply;
    if (bad_case("outside_ram", s, 3)) return FS_TIMEOUT;

    req_begin(OP_LOOKUP, ROOT);
    req_name("hello.txt");
    req_header(fs.req_len);
    s[0].len = fs.req_len;
    s[1] = (struct seg){FAR, OUT_HDR + sizeof(struct fuse_entry_out), D_WRITE};
    if (bad_case("outside_ram_reply", s, 2)) return FS_TIMEOUT;

    /* Open handles until the device refuses one (it caps them per VM), then give them back. */
    uint64_t hello = 0;
    err = op_lookup(ROOT, "hello.txt", &e);
    if (!err) hello = e.nodeid;
    uint32_t opened = 0;
    while (!err && opened < EXHAUST_MAX) {
        err = op_open(OP_OPEN, hello, O_RDONLY_, &fs_fhs[opened]);
        if (!err) opened++;
    }
    if (err == FS_TIMEOUT) return err;
    put_kv_dec("PROBE: fs bad case=handle_exhaustion opened=", opened);
    put_kv_err(" error=", err);
    putc_('\n');
    uint32_t release_errors = 0;
    for (uint32_t i = 0; i < opened; i++) {
        err = op_release(OP_RELEASE, hello, fs_fhs[i]);
        if (err == FS_TIMEOUT) return err;
        if (err) release_errors++;
    }
    uint64_t fh = 0;
    err = op_open(OP_OPEN, hello, O_RDONLY_, &fh);
    if (!err) err = op_release(OP_RELEASE, hello, fh);
    if (err == FS_TIMEOUT) return err;
    put_kv_err("PROBE: fs bad case=after_exhaustion error=", err);
    put_kv_dec(" release_errors=", release_errors);
    putc_('\n');

    /* Lookups the device must count, all forgotten at once (no reply: no writable part). */
    uint32_t lookup_errors = 0;
    for (uint32_t i = 0; i < LOOKUPS; i++) {
        err = op_lookup(ROOT, "hello.txt", &e);
        if (err == FS_TIMEOUT) return err;
        if (err) lookup_errors++;
    }
    struct fuse_forget_in forget = {LOOKUPS};
    req_begin(OP_FORGET, hello);
    req_add(&forget, sizeof(forget));
    req_header(fs.req_len);
    s[0] = (struct seg){req, fs.req_len, 0};
    int64_t used = fs_chain(Q_HIPRIO, s, 1, FS_MS, 0);
    struct fuse_attr_out a;
    int after = op_getattr(hello, &a);
    if (after == FS_TIMEOUT) return after;
    put_kv_dec("PROBE: fs bad case=forget used=", used >= 0);
    put_kv_dec(" len=", used >= 0 ? (uint64_t)used : 0);
    put_kv_dec(" lookups=", LOOKUPS);
    put_kv_dec(" lookup_errors=", lookup_errors);
    put_kv_err(" getattr_after=", after);
    putc_('\n');
    return 0;
}

static void fs_test(void) {
    int err = fs_init();
    if (err == FS_TIMEOUT) return;
    put_kv_err("PROBE: fs init error=", err);
    put_kv_dec(" major=", fs.init.major);
    put_kv_dec(" minor=", fs.init.minor);
    put_kv_dec(" max_write=", fs.init.max_write);
    put_kv_hex(" flags=", fs.init.flags);
    putc_('\n');
    if (err) return;
    uint64_t hello = 0;
    if (t_hello(&hello) || t_bigread() || t_inner() || t_readdir() || (fs.rw ? t_write() : t_readonly(hello)) ||
        t_escapes(hello) || t_bad())
        return;
    req_begin(OP_DESTROY, 0);
    err = fs_call("destroy");
    if (err == FS_TIMEOUT) return;
    put_kv_err("PROBE: fs destroy error=", err);
    putc_('\n');
}

/* ---- Entry point ------------------------------------------------------------------------- */

static void fs_failed(const char *why) {
    puts_("PROBE: fs failed ");
    puts_(why);
    put_kv_dec(" dev=", (uint64_t)fs.n);
    put_kv_hex(" dev_status=", fr(R_STATUS));
    putc_('\n');
    fs_reset();
}

void fs_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    if (probe_word_is(mode, "list")) {
        int count = 0;
        for (int after = -1;; count++) {
            zero(&fs, sizeof(fs));
            fs.n = probe_virtio_next(cmdline, rsdp_hint, VIRTIO_ID_FS, after, &fs.base, &fs.gsi);
            if (fs.n < 0) break;
            after = fs.n;
            const char *why = fs_setup();
            if (why) fs_failed(why);
            else {
                fs_line();
                fs_reset();
            }
        }
        put_kv_dec("PROBE: fs list count=", (uint64_t)count);
        putc_('\n');
        return;
    }
    if (!probe_word_is(mode, "test")) {
        puts_("PROBE: fs failed unknown-mode\n");
        return;
    }
    zero(&fs, sizeof(fs));
    fs.n = probe_virtio_find(cmdline, rsdp_hint, VIRTIO_ID_FS, &fs.base, &fs.gsi);
    if (fs.n < 0) {
        puts_("PROBE: fs failed no-device\n");
        return;
    }
    const char *why = fs_setup();
    if (why) {
        fs_failed(why);
        return;
    }
    fs_line();
    fs.rw = probe_word_is(probe_cmdline_arg(cmdline, "probe.fs_rw"), "1");
    fs_test();
    fs_reset();
    puts_("PROBE: fs done\n");
}
