/* The probe's virtio-9p driver: 9P2000.L requests over one polled split virtqueue of a
 * virtio-mmio device with DeviceID 9, one request at a time, laid out as Linux's
 * net/9p/protocol.c writes them; large reads and writes are split the way its zero-copy path
 * splits them (a small header buffer, then the data in a buffer of its own).
 *
 * probe.p9=list: every virtio-9p device, set up (DRIVER_OK) and reset again, one line each:
 *   PROBE: p9 dev=N base=0x.. gsi=G features=0x.. tag=<tag> queue_size=Q status=0x..
 *   PROBE: p9 list count=N
 *
 * probe.p9=test [probe.p9_rw=1]: the first virtio-9p device, on the share
 * tests/test_p9_probe.py makes (the same tree as the virtio-fs probe's: hello.txt,
 * dir/inner.txt, big.bin, the symlinks escape -> /etc and up -> ../outside-secret). Without
 * probe.p9_rw=1 the share is read-only.
 *   PROBE: p9 dev=N ...                                        (as for list)
 *   PROBE: p9 version error=E msize=M version=<v>
 *   PROBE: p9 attach error=E qid_type=0x..
 *   PROBE: p9 getattr name=hello.txt error=E size=S mode=0x..   (Twalk, then Tgetattr)
 *   PROBE: p9 read name=hello.txt error=E len=L data=<text>    (Tlopen read-only, Tread 4096)
 *   PROBE: p9 bigread error=E bytes=N reads=R fnv=0x..         (big.bin in 64 KiB Treads)
 *   PROBE: p9 read name=dir/inner.txt error=E len=L data=<text>
 *   PROBE: p9 readdir error=E count=N names=<name>,...         (the root, Treaddirs of 256)
 * read-write (probe.p9_rw=1): Tlcreate new.txt, Twrite (zero-copy layout), Tclunk; Tmkdir
 * newdir; Trenameat new.txt to newdir/moved.txt; Tlink hl to hello.txt:
 *   PROBE: p9 create error=E
 *   PROBE: p9 write error=E count=N clunk=E
 *   PROBE: p9 mkdir error=E
 *   PROBE: p9 rename error=E
 *   PROBE: p9 link error=E
 * read-only: each must be refused (Tlopen hello.txt write-only, Tlcreate, Tmkdir, Tunlinkat):
 *   PROBE: p9 ro create=E mkdir=E unlink=E open_wr=E
 * ways out of the share, each refused (see t_escapes for the cases):
 *   PROBE: p9 escape case=C error=E nwqid=N [same_as_root=0|1] [data=<text>]
 * hostile requests (see t_bad), each answered (used=1) with an Rlerror, or the device asks
 * for a reset:
 *   PROBE: p9 bad case=C used=0|1 len=L [error=E] dev_status=0x..
 *   PROBE: p9 bad reinit after=C error=E      (the device reset and set up again, Tversion's error)
 *   PROBE: p9 bad case=open_exhaustion opened=N error=E
 *   PROBE: p9 bad case=fid_exhaustion fids=N error=E
 *   PROBE: p9 bad case=after_exhaustion error=E clunk_errors=N
 * and at the end:
 *   PROBE: p9 done
 *
 * E is 0 or a negative errno (an Rlerror's ecode), -71 (EPROTO) when the reply was malformed,
 * which is also reported as
 *   PROBE: p9 malformed where=<request> len=L size=S type=T tag_ok=0|1
 * data= is the rest of the line: the first 256 bytes the device gave, printable ASCII as it is,
 * "\n" for a newline, "\\" for a backslash and "\xHH" for any other byte. When the device does
 * not use a request within 5 s: `PROBE: p9 timeout <where> ...` and the test stops there.
 * Without a device: `PROBE: p9 failed no-device`; `PROBE: p9 failed <why> dev=N dev_status=0x..`
 * when it cannot be set up. */
#include "p9.h"
#include "report.h"
#include "virtio_mmio.h"


#define VIRTIO_ID_9P 9
#define F_MOUNT_TAG 1ull

#define Q_MAX 128
#define CHAIN_MAX 4
#define TAG_MAX 64                  /* the longest tag shown */
#define P9_MS 5000                  /* how long a request may take */
#define BAD_MS 2000                 /* ... a hostile one, before we reset the device */
#define P9_TIMEOUT 1                /* not an errno: the device did not answer, the test stops */
#define EPROTO_ 71
#define MSIZE 131072
#define SMALL_READ 4096
#define BIG_READ 65536
#define BIG_READS_MAX 64            /* 4 MiB: big.bin is 1 MiB + 123 bytes */
#define DIR_READ 256
#define DIR_READS_MAX 64
#define FAR 0x7f0000000000ull       /* far beyond guest RAM */
#define OPEN_MAX 20000              /* more than the device's 16,384 open files */
#define FIDS_MAX 40000              /* more than its 32,768 fids */

#define O_RDONLY_ 0
#define O_WRONLY_ 1
#define O_RDWR_ 2
#define O_DIRECTORY_ 0200000
#define AT_REMOVEDIR_ 0x200

enum {
    RLERROR = 7, TSTATFS = 8, TLOPEN = 12, TLCREATE = 14, TSYMLINK = 16, TREADLINK = 22, TGETATTR = 24,
    TREADDIR = 40, TLINK = 70, TMKDIR = 72, TRENAMEAT = 74, TUNLINKAT = 76, TVERSION = 100, TATTACH = 104,
    TWALK = 110, TREAD = 116, TWRITE = 118, TCLUNK = 120, TUNKNOWN = 250,
};

#define NOFID 0xffffffffu
#define ROOT_FID 0
#define HDR 7u                      /* size[4] type[1] tag[2] */

static uint8_t p9_qmem[3][4096] __attribute__((aligned(4096)));
static uint8_t p9_req[8192] __attribute__((aligned(64)));                    /* the request */
static uint8_t p9_rep[HDR + 4 + SMALL_READ] __attribute__((aligned(64)));    /* its reply */
static uint8_t p9_big[BIG_READ] __attribute__((aligned(4096)));              /* a big Tread's data */

static struct p9 {
    int n;
    uint64_t base;
    uint32_t gsi;
    uint64_t offered;
    char tag[TAG_MAX + 1];
    uint32_t status;
    struct vq q;
    int rw;
    uint32_t msize;
    uint32_t req_len;
    uint16_t req_tag;
    uint8_t req_type;
    uint32_t rlen;                  /* reply bytes after the header */
    const uint8_t *rbody;           /* where they are */
    uint32_t next_fid;
} p9;

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* ---- The device and its queue ------------------------------------------------------------ */

static const char *p9_setup(void) {
    const char *why = vm_features(p9.base, VIRTIO_ID_9P, "not-virtio-9p-v2", F_VERSION_1 | F_MOUNT_TAG,
                                  &p9.offered, 0);
    if (why) return why;
    why = vm_queue(p9.base, &p9.q, 0, p9_qmem, Q_MAX, CHAIN_MAX, "no-queue");
    if (why) return why;
    p9.status = vm_driver_ok(p9.base);
    if (p9.status != ST_LIVE) return "driver-ok-refused";
    uint32_t gen, tries = 0, len;
    do {
        gen = vm_read(p9.base, R_CONFIG_GENERATION);
        len = vm_cfg16(p9.base, 0);
        for (uint32_t i = 0; i < len && i < TAG_MAX; i++) p9.tag[i] = (char)vm_cfg8(p9.base, 2 + i);
    } while (gen != vm_read(p9.base, R_CONFIG_GENERATION) && ++tries < 100);
    p9.tag[len < TAG_MAX ? len : TAG_MAX] = 0;
    for (uint32_t i = 0; p9.tag[i]; i++)  /* one word on the report line */
        if (p9.tag[i] <= ' ' || p9.tag[i] >= 0x7f) p9.tag[i] = '?';
    return 0;
}

static void p9_line(void) {
    put_kv_dec("PROBE: p9 dev=", (uint64_t)p9.n);
    put_kv_hex(" base=", p9.base);
    put_kv_dec(" gsi=", p9.gsi);
    put_kv_hex(" features=", p9.offered);
    puts_(" tag=");
    puts_(p9.tag[0] ? p9.tag : "-");
    put_kv_dec(" queue_size=", p9.q.size);
    put_kv_hex(" status=", p9.status);
    putc_('\n');
}

/* Posts `n` segments as one chain (descriptors 0..n-1) and waits up to `ms` for the device to
 * use it; with `grace`, only 50 ms more once the device asks for a reset. Returns the used
 * length, or -1. */
static int64_t p9_chain(const struct seg *s, int n, uint64_t ms, int grace) {
    vq_chain(&p9.q, 0, s, n);
    vq_avail_add(&p9.q, 0);
    vq_avail_publish(&p9.q);
    vm_notify(p9.base, 0);
    uint64_t end = probe_deadline_ms(ms), stop = 0;
    while (!vq_has_used(&p9.q)) {
        uint64_t now = rdtsc_();
        if (now > end || (stop && now > stop)) return -1;
        if (grace && !stop && (vm_read(p9.base, R_STATUS) & ST_NEEDS_RESET)) stop = probe_deadline_ms(50);
        __asm__ volatile("pause");
    }
    uint32_t id, len;
    vq_used_take(&p9.q, &id, &len);
    return len;
}

static void p9_timeout(const char *where) {
    puts_("PROBE: p9 timeout ");
    puts_(where);
    put_kv_hex(" dev_status=", vm_read(p9.base, R_STATUS));
    put_kv_dec(" used=", p9.q.used[1]);
    put_kv_dec(" avail=", p9.q.avail_idx);
    putc_('\n');
}

/* ---- Requests ---------------------------------------------------------------------------- */

static void req_begin(uint8_t type) {
    p9.req_type = type;
    p9.req_len = HDR;
}
static void req_add(const void *p, uint32_t n) {
    copy(p9_req + p9.req_len, p, n);
    p9.req_len += n;
}
static void r16(uint16_t v) { req_add(&v, 2); }
static void r32(uint32_t v) { req_add(&v, 4); }
static void r64(uint64_t v) { req_add(&v, 8); }
static void rstr(const char *s) {
    r16((uint16_t)slen(s));
    req_add(s, slen(s));
}
/* The header, saying `size` bytes (the request's own length but for hostile ones). */
static void req_header(uint32_t size) {
    p9.req_tag++;
    if (p9.req_tag == 0xffff) p9.req_tag = 1;  /* NOTAG is Tversion's alone */
    uint16_t tag = p9.req_type == TVERSION ? 0xffff : p9.req_tag;
    copy(p9_req, &size, 4);
    p9_req[4] = p9.req_type;
    copy(p9_req + 5, &tag, 2);
}

/* Checks the reply at `rep` (`len` bytes used): its size, tag and type. Returns 0, the negated
 * ecode of an Rlerror, or -EPROTO (reported). Sets p9.rbody/p9.rlen. */
static int reply_check(const uint8_t *rep, int64_t len, const char *where) {
    uint32_t size = len >= HDR ? get32(rep) : 0;
    uint8_t type = len >= HDR ? rep[4] : 0;
    uint16_t want = p9.req_type == TVERSION ? 0xffff : p9.req_tag;
    int tag_ok = len >= HDR && get16(rep + 5) == want;
    if (len < HDR || size != (uint64_t)len || !tag_ok || (type != RLERROR && type != p9.req_type + 1) ||
        (type == RLERROR && size != HDR + 4)) {
        puts_("PROBE: p9 malformed where=");
        puts_(where);
        put_kv_dec(" len=", (uint64_t)len);
        put_kv_dec(" size=", size);
        put_kv_dec(" type=", type);
        put_kv_dec(" tag_ok=", (uint64_t)tag_ok);
        putc_('\n');
        return -EPROTO_;
    }
    p9.rbody = rep + HDR;
    p9.rlen = size - HDR;
    if (type == RLERROR) return -(int)get32(rep + HDR);
    return 0;
}

/* Sends the request (its reply into p9_rep). Returns the reply's error or P9_TIMEOUT. */
static int call(const char *where) {
    req_header(p9.req_len);
    struct seg s[2] = {{addr_of(p9_req), p9.req_len, 0}, {addr_of(p9_rep), sizeof p9_rep, D_WRITE}};
    int64_t len = p9_chain(s, 2, P9_MS, 0);
    if (len < 0) {
        p9_timeout(where);
        return P9_TIMEOUT;
    }
    return reply_check(p9_rep, len, where);
}

static uint32_t new_fid(void) { return p9.next_fid++; }

/* Twalk `fid` -> `newfid` through the names of the NULL-terminated `names`. Returns the error
 * (a partial walk is 0 with *nwqid short); *nwqid the QIDs that came back. */
static int walk(uint32_t fid, uint32_t newfid, const char *const *names, uint32_t *nwqid, uint8_t *qid13) {
    req_begin(TWALK);
    r32(fid);
    r32(newfid);
    uint16_t n = 0;
    while (names[n]) n++;
    r16(n);
    for (uint16_t i = 0; i < n; i++) rstr(names[i]);
    int e = call("walk");
    *nwqid = 0;
    if (e) return e;
    if (p9.rlen < 2) return -EPROTO_;
    *nwqid = get16(p9.rbody);
    if (qid13 && *nwqid && p9.rlen >= 2 + 13 * *nwqid) copy(qid13, p9.rbody + 2 + 13 * (*nwqid - 1), 13);
    return 0;
}
/* Walks one name from the root to a new fid; returns it, or NOFID (the error in *err). */
static uint32_t walk1(const char *name, int *err) {
    const char *names[2] = {name, 0};
    uint32_t fid = new_fid(), n;
    *err = walk(ROOT_FID, fid, names, &n, 0);
    if (!*err && n != 1) *err = -2; /* ENOENT */
    return *err ? NOFID : fid;
}

static int clunk(uint32_t fid) {
    req_begin(TCLUNK);
    r32(fid);
    return call("clunk");
}

static int lopen(uint32_t fid, uint32_t flags) {
    req_begin(TLOPEN);
    r32(fid);
    r32(flags);
    return call("lopen");
}

/* Tread of `count` at `offset` into p9_rep (small) — returns the error, *n the bytes. */
static int read_small(uint32_t fid, uint64_t offset, uint32_t count, uint32_t *n) {
    req_begin(TREAD);
    r32(fid);
    r64(offset);
    r32(count);
    int e = call("read");
    *n = 0;
    if (e) return e;
    if (p9.rlen < 4 || get32(p9.rbody) != p9.rlen - 4) return -EPROTO_;
    *n = p9.rlen - 4;
    return 0;
}

static int getattr(uint32_t fid, uint64_t *size, uint32_t *mode, uint8_t *qid13) {
    req_begin(TGETATTR);
    r32(fid);
    r64(0x7ff);
    int e = call("getattr");
    if (e) return e;
    if (p9.rlen < 153) return -EPROTO_;
    if (qid13) copy(qid13, p9.rbody + 8, 13);
    *mode = get32(p9.rbody + 21);
    *size = get64(p9.rbody + 49);
    return 0;
}

static int bytes_equal(const uint8_t *a, const uint8_t *b, uint32_t n) {
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

/* ---- The test ---------------------------------------------------------------------------- */

/* Reads a small file through a fresh fid: walk, getattr (for hello.txt), lopen, read, clunk. */
static int t_read(const char *const *path, const char *name) {
    uint32_t fid = new_fid(), n;
    int e = walk(ROOT_FID, fid, path, &n, 0);
    if (e == P9_TIMEOUT) return 1;
    if (!e && !path[n]) {
        if (bytes_equal((const uint8_t *)name, (const uint8_t *)"hello.txt", 10)) {
            uint64_t size = 0;
            uint32_t mode = 0;
            int g = getattr(fid, &size, &mode, 0);
            if (g == P9_TIMEOUT) return 1;
            puts_("PROBE: p9 getattr name=hello.txt");
            put_kv_err(" error=", g);
            put_kv_dec(" size=", size);
            put_kv_hex(" mode=", mode);
            putc_('\n');
        }
        e = lopen(fid, O_RDONLY_);
        if (e == P9_TIMEOUT) return 1;
        n = 0;
        if (!e) e = read_small(fid, 0, SMALL_READ, &n);
        if (e == P9_TIMEOUT) return 1;
        puts_("PROBE: p9 read name=");
        puts_(name);
        put_kv_err(" error=", e);
        put_kv_dec(" len=", n);
        end_line(p9.rbody + 4, e ? 0 : n);
        if (clunk(fid) == P9_TIMEOUT) return 1;
        return 0;
    }
    puts_("PROBE: p9 read name=");
    puts_(name);
    put_kv_err(" error=", e ? e : -2);
    puts_(" len=0\n");
    return 0;
}

/* big.bin in BIG_READ Treads, each reply over two buffers as Linux's zero-copy read makes it:
 * the 11-byte header and count, then the data in p9_big. */
static int t_bigread(void) {
    int e;
    uint32_t fid = walk1("big.bin", &e);
    if (e == P9_TIMEOUT) return 1;
    if (!e) e = lopen(fid, O_RDONLY_);
    if (e == P9_TIMEOUT) return 1;
    uint64_t total = 0, h = FNV_INIT, reads = 0;
    while (!e && reads < BIG_READS_MAX) {
        req_begin(TREAD);
        r32(fid);
        r64(total);
        r32(BIG_READ);
        req_header(p9.req_len);
        struct seg s[3] = {{addr_of(p9_req), p9.req_len, 0},
                           {addr_of(p9_rep), HDR + 4, D_WRITE},
                           {addr_of(p9_big), BIG_READ, D_WRITE}};
        int64_t len = p9_chain(s, 3, P9_MS, 0);
        if (len < 0) {
            p9_timeout("bigread");
            return 1;
        }
        reads++;
        /* the header is in p9_rep, the data in p9_big: check the header alone */
        uint32_t size = get32(p9_rep);
        if (len < HDR || size != (uint64_t)len) {
            e = reply_check(p9_rep, len, "bigread");
            break;
        }
        if (p9_rep[4] == RLERROR) {
            e = reply_check(p9_rep, len, "bigread");
            break;
        }
        uint32_t n = get32(p9_rep + HDR);
        if (p9_rep[4] != TREAD + 1 || n != size - HDR - 4 || n > BIG_READ) {
            e = -EPROTO_;
            break;
        }
        if (!n) break;
        h = fnv1a(h, p9_big, n);
        total += n;
    }
    puts_("PROBE: p9 bigread");
    put_kv_err(" error=", e);
    put_kv_dec(" bytes=", total);
    put_kv_dec(" reads=", reads);
    put_kv_hex(" fnv=", h);
    putc_('\n');
    if (fid != NOFID && clunk(fid) == P9_TIMEOUT) return 1;
    return 0;
}

/* The root's entries, in Treaddirs of DIR_READ bytes. */
static int t_readdir(void) {
    uint32_t fid = new_fid(), n;
    const char *none[1] = {0};
    int e = walk(ROOT_FID, fid, none, &n, 0);
    if (e == P9_TIMEOUT) return 1;
    if (!e) e = lopen(fid, O_RDONLY_ | O_DIRECTORY_);
    if (e == P9_TIMEOUT) return 1;
    static char names[2048];
    uint32_t at = 0, count = 0;
    uint64_t offset = 0;
    for (int r = 0; !e && r < DIR_READS_MAX; r++) {
        req_begin(TREADDIR);
        r32(fid);
        r64(offset);
        r32(DIR_READ);
        e = call("readdir");
        if (e == P9_TIMEOUT) return 1;
        if (e) break;
        uint32_t got = p9.rlen >= 4 ? get32(p9.rbody) : 0;
        if (p9.rlen < 4 || got != p9.rlen - 4 || got > DIR_READ) {
            e = -EPROTO_;
            break;
        }
        if (!got) break;
        const uint8_t *p = p9.rbody + 4, *endp = p + got;
        while (p + 24 <= endp) {
            offset = get64(p + 13);
            uint32_t len = get16(p + 22);
            if (p + 24 + len > endp) {
                e = -EPROTO_;
                break;
            }
            if (count) names[at < sizeof names - 1 ? at++ : at] = ',';
            for (uint32_t i = 0; i < len && at < sizeof names - 1; i++) names[at++] = (char)p[24 + i];
            count++;
            p += 24 + len;
        }
    }
    names[at] = 0;
    puts_("PROBE: p9 readdir");
    put_kv_err(" error=", e);
    put_kv_dec(" count=", count);
    puts_(" names=");
    puts_(names);
    putc_('\n');
    if (clunk(fid) == P9_TIMEOUT) return 1;
    return 0;
}

static const char WRITTEN[] = "written by the guest\n";

/* Tlcreate new.txt, Twrite in the zero-copy layout (the fields, then the data in a buffer of
 * its own), Tclunk; Tmkdir newdir; Trenameat into it; Tlink hl to hello.txt. */
static int t_write(void) {
    uint32_t dir = new_fid(), n;
    const char *none[1] = {0};
    int e = walk(ROOT_FID, dir, none, &n, 0);
    if (e == P9_TIMEOUT) return 1;
    req_begin(TLCREATE);
    r32(dir);
    rstr("new.txt");
    r32(O_RDWR_);
    r32(0644);
    r32(0);
    if (!e) e = call("create");
    if (e == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 create error=", e);
    putc_('\n');
    uint32_t count = 0;
    int w = e;
    if (!e) {
        req_begin(TWRITE);
        r32(dir);
        r64(0);
        r32(sizeof WRITTEN - 1);
        req_header(p9.req_len + sizeof WRITTEN - 1);
        static uint8_t data[64];
        copy(data, WRITTEN, sizeof WRITTEN - 1);
        struct seg s[3] = {{addr_of(p9_req), p9.req_len, 0},
                           {addr_of(data), sizeof WRITTEN - 1, 0},
                           {addr_of(p9_rep), sizeof p9_rep, D_WRITE}};
        int64_t len = p9_chain(s, 3, P9_MS, 0);
        if (len < 0) {
            p9_timeout("write");
            return 1;
        }
        w = reply_check(p9_rep, len, "write");
        if (!w) count = p9.rlen >= 4 ? get32(p9.rbody) : 0;
    }
    int c = clunk(dir);
    if (c == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 write error=", w);
    put_kv_dec(" count=", count);
    put_kv_err(" clunk=", c);
    putc_('\n');

    req_begin(TMKDIR);
    r32(ROOT_FID);
    rstr("newdir");
    r32(0755);
    r32(0);
    e = call("mkdir");
    if (e == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 mkdir error=", e);
    putc_('\n');
    int err;
    uint32_t nd = walk1("newdir", &err);
    if (err == P9_TIMEOUT) return 1;
    req_begin(TRENAMEAT);
    r32(ROOT_FID);
    rstr("new.txt");
    r32(nd == NOFID ? ROOT_FID : nd);
    rstr("moved.txt");
    e = err ? err : call("rename");
    if (e == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 rename error=", e);
    putc_('\n');
    if (nd != NOFID && clunk(nd) == P9_TIMEOUT) return 1;

    uint32_t hello = walk1("hello.txt", &err);
    if (err == P9_TIMEOUT) return 1;
    req_begin(TLINK);
    r32(ROOT_FID);
    r32(hello);
    rstr("hl");
    e = err ? err : call("link");
    if (e == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 link error=", e);
    putc_('\n');
    if (hello != NOFID && clunk(hello) == P9_TIMEOUT) return 1;
    return 0;
}

/* On a read-only share every change is refused. */
static int t_readonly(void) {
    uint32_t dir = new_fid(), n;
    const char *none[1] = {0};
    int e = walk(ROOT_FID, dir, none, &n, 0), create, mkdir, unlink, open_wr;
    if (e == P9_TIMEOUT) return 1;
    req_begin(TLCREATE);
    r32(dir);
    rstr("new.txt");
    r32(O_RDWR_);
    r32(0644);
    r32(0);
    create = e ? e : call("ro-create");
    req_begin(TMKDIR);
    r32(ROOT_FID);
    rstr("newdir");
    r32(0755);
    r32(0);
    mkdir = call("ro-mkdir");
    req_begin(TUNLINKAT);
    r32(ROOT_FID);
    rstr("hello.txt");
    r32(0);
    unlink = call("ro-unlink");
    int err;
    uint32_t hello = walk1("hello.txt", &err);
    open_wr = err ? err : lopen(hello, O_WRONLY_);
    if (create == P9_TIMEOUT || mkdir == P9_TIMEOUT || unlink == P9_TIMEOUT || open_wr == P9_TIMEOUT) return 1;
    put_kv_err("PROBE: p9 ro create=", create);
    put_kv_err(" mkdir=", mkdir);
    put_kv_err(" unlink=", unlink);
    put_kv_err(" open_wr=", open_wr);
    putc_('\n');
    if (clunk(dir) == P9_TIMEOUT) return 1;
    if (hello != NOFID && clunk(hello) == P9_TIMEOUT) return 1;
    return 0;
}

static void escape_line(const char *c, int e, uint32_t nwqid, int same, const uint8_t *data, uint32_t n) {
    puts_("PROBE: p9 escape case=");
    puts_(c);
    put_kv_err(" error=", e);
    put_kv_dec(" nwqid=", nwqid);
    if (same >= 0) put_kv_dec(" same_as_root=", (uint64_t)same);
    end_line(data, n);
}

/* Every way out of the share: each walk, open or read must stay inside it. */
static int t_escapes(const uint8_t *root_qid) {
    uint32_t n, fid;
    uint8_t qid[13];
    int e;
    /* dotdot: `..` of the root is the root. */
    {
        const char *p[] = {"..", 0};
        fid = new_fid();
        e = walk(ROOT_FID, fid, p, &n, qid);
        if (e == P9_TIMEOUT) return 1;
        escape_line("dotdot", e, n, !e && n == 1 ? bytes_equal(qid, root_qid, 13) : -1, 0, 0);
        if (!e && n == 1 && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* dotdot_secret: `..` then the secret beside the share. */
    {
        const char *p[] = {"..", "outside-secret", 0};
        fid = new_fid();
        e = walk(ROOT_FID, fid, p, &n, 0);
        if (e == P9_TIMEOUT) return 1;
        escape_line("dotdot_secret", e ? e : n == 2 ? 0 : -2, n, -1, 0, 0);
        if (!e && n == 2 && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* dotdot_chain: dir, .., .., .., outside-secret. */
    {
        const char *p[] = {"dir", "..", "..", "..", "outside-secret", 0};
        fid = new_fid();
        e = walk(ROOT_FID, fid, p, &n, 0);
        if (e == P9_TIMEOUT) return 1;
        escape_line("dotdot_chain", e ? e : n == 5 ? 0 : -2, n, -1, 0, 0);
        if (!e && n == 5 && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* slash_name: one name with a '/' in it. */
    {
        const char *p[] = {"../outside-secret", 0};
        fid = new_fid();
        e = walk(ROOT_FID, fid, p, &n, 0);
        if (e == P9_TIMEOUT) return 1;
        escape_line("slash_name", e ? e : n == 1 ? 0 : -2, n, -1, 0, 0);
        if (!e && n == 1 && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* abs_symlink_walk: through the link to /etc: the walk stops at the link. */
    {
        const char *p[] = {"escape", "passwd", 0};
        fid = new_fid();
        e = walk(ROOT_FID, fid, p, &n, 0);
        if (e == P9_TIMEOUT) return 1;
        escape_line("abs_symlink_walk", e ? e : n == 2 ? 0 : -2, n, -1, 0, 0);
        if (!e && n == 2 && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* abs_symlink_open / rel_symlink_open: the link itself, opened and read. */
    const char *links[2][2] = {{"escape", "abs_symlink_open"}, {"up", "rel_symlink_open"}};
    for (int i = 0; i < 2; i++) {
        int err;
        fid = walk1(links[i][0], &err);
        if (err == P9_TIMEOUT) return 1;
        uint32_t got = 0;
        e = err ? err : lopen(fid, O_RDONLY_);
        if (e == P9_TIMEOUT) return 1;
        if (!e) {
            e = read_small(fid, 0, SMALL_READ, &got);
            if (e == P9_TIMEOUT) return 1;
        }
        escape_line(links[i][1], e, err ? 0 : 1, -1, p9.rbody + 4, e ? 0 : got);
        if (fid != NOFID && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* readlink: the relative link's text is the guest's to resolve. */
    {
        int err;
        fid = walk1("up", &err);
        if (err == P9_TIMEOUT) return 1;
        req_begin(TREADLINK);
        r32(fid);
        e = err ? err : call("readlink");
        if (e == P9_TIMEOUT) return 1;
        uint32_t len = !e && p9.rlen >= 2 ? get16(p9.rbody) : 0;
        escape_line("readlink", e, 0, -1, p9.rbody + 2, len <= p9.rlen - 2 ? len : 0);
        if (fid != NOFID && clunk(fid) == P9_TIMEOUT) return 1;
    }
    /* bad_fid: a fid that is not ours. */
    {
        uint64_t size;
        uint32_t mode;
        e = getattr(0xdead, &size, &mode, 0);
        if (e == P9_TIMEOUT) return 1;
        escape_line("bad_fid", e, 0, -1, 0, 0);
    }
    /* rename_out: a new name with a '/' in it. */
    {
        req_begin(TRENAMEAT);
        r32(ROOT_FID);
        rstr("hello.txt");
        r32(ROOT_FID);
        rstr("../hello-out.txt");
        e = call("rename-out");
        if (e == P9_TIMEOUT) return 1;
        escape_line("rename_out", e, 0, -1, 0, 0);
    }
    /* symlink_made: a link the guest makes to /etc is never followed on the host. */
    if (p9.rw) {
        req_begin(TSYMLINK);
        r32(ROOT_FID);
        rstr("made-link");
        rstr("/etc/passwd");
        r32(0);
        e = call("symlink");
        if (e == P9_TIMEOUT) return 1;
        int err = e;
        uint32_t got = 0;
        fid = err ? NOFID : walk1("made-link", &err);
        if (err == P9_TIMEOUT) return 1;
        e = err ? err : lopen(fid, O_RDONLY_);
        if (e == P9_TIMEOUT) return 1;
        if (!e) {
            e = read_small(fid, 0, SMALL_READ, &got);
            if (e == P9_TIMEOUT) return 1;
        }
        escape_line("symlink_made", e, fid == NOFID ? 0 : 1, -1, p9.rbody + 4, e ? 0 : got);
        if (fid != NOFID && clunk(fid) == P9_TIMEOUT) return 1;
        req_begin(TUNLINKAT);
        r32(ROOT_FID);
        rstr("made-link");
        r32(0);
        if (call("unlink-link") == P9_TIMEOUT) return 1;
    }
    return 0;
}

static void reinit(const char *after);

/* Sends a hostile chain and reports how the device took it. Returns 1 when the device no
 * longer answers (timed out with it live), 0 otherwise. */
static int bad(const char *c, const struct seg *s, int n) {
    int64_t len = p9_chain(s, n, BAD_MS, 1);
    uint32_t st = vm_read(p9.base, R_STATUS);
    puts_("PROBE: p9 bad case=");
    puts_(c);
    put_kv_dec(" used=", len >= 0);
    put_kv_dec(" len=", len >= 0 ? (uint64_t)len : 0);
    if (len >= (int64_t)HDR + 4 && p9_rep[4] == RLERROR) put_kv_err(" error=", -(int)get32(p9_rep + HDR));
    put_kv_hex(" dev_status=", st);
    putc_('\n');
    if (len < 0 || (st & ST_NEEDS_RESET)) {
        reinit(c);
        return 0;
    }
    return 0;
}

static int version(void) {
    req_begin(TVERSION);
    r32(MSIZE);
    rstr("9P2000.L");
    int e = call("version");
    if (!e && p9.rlen >= 6) p9.msize = get32(p9.rbody);
    return e;
}

static int attach(uint8_t *qid13) {
    req_begin(TATTACH);
    r32(ROOT_FID);
    r32(NOFID);
    rstr("");
    rstr("");
    r32(0);
    int e = call("attach");
    if (!e && qid13 && p9.rlen >= 13) copy(qid13, p9.rbody, 13);
    return e;
}

static void reinit(const char *after) {
    const char *why = p9_setup();
    int e = why ? -EPROTO_ : version();
    if (!e) e = attach(0);
    puts_("PROBE: p9 bad reinit after=");
    puts_(after);
    put_kv_err(" error=", e);
    putc_('\n');
    p9.next_fid = 1;
}

/* Hostile requests, then fids and open files taken until the device refuses. */
static int t_bad(void) {
    struct seg s[3];
    /* size_too_big: the header says more than the chain holds. */
    req_begin(TCLUNK);
    r32(12345);
    req_header(1 << 20);
    s[0] = (struct seg){addr_of(p9_req), p9.req_len, 0};
    s[1] = (struct seg){addr_of(p9_rep), sizeof p9_rep, D_WRITE};
    bad("size_too_big", s, 2);
    /* size_too_small: shorter than a header. */
    req_begin(TCLUNK);
    r32(12345);
    req_header(3);
    bad("size_too_small", s, 2);
    /* unknown_type */
    req_begin(TUNKNOWN);
    r32(0);
    req_header(p9.req_len);
    s[0].len = p9.req_len;
    bad("unknown_type", s, 2);
    /* short_body: a Twalk of two bytes. */
    req_begin(TWALK);
    r16(0);
    req_header(p9.req_len);
    s[0].len = p9.req_len;
    bad("short_body", s, 2);
    /* walk_too_long: 17 names. */
    req_begin(TWALK);
    r32(ROOT_FID);
    r32(900);
    r16(17);
    for (int i = 0; i < 17; i++) rstr("dir");
    req_header(p9.req_len);
    s[0].len = p9.req_len;
    bad("walk_too_long", s, 2);
    /* bad_string: a name longer than the message. */
    req_begin(TWALK);
    r32(ROOT_FID);
    r32(901);
    r16(1);
    r16(5000);
    req_add("dir", 3);
    req_header(p9.req_len);
    s[0].len = p9.req_len;
    bad("bad_string", s, 2);
    /* no_reply_buf: nowhere to answer. */
    req_begin(TCLUNK);
    r32(12345);
    req_header(p9.req_len);
    s[0].len = p9.req_len;
    bad("no_reply_buf", s, 1);
    /* outside_ram / outside_ram_reply */
    s[0] = (struct seg){FAR, 64, 0};
    bad("outside_ram", s, 2);
    req_begin(TCLUNK);
    r32(12345);
    req_header(p9.req_len);
    s[0] = (struct seg){addr_of(p9_req), p9.req_len, 0};
    s[1] = (struct seg){FAR, 4096, D_WRITE};
    bad("outside_ram_reply", s, 2);

    /* open_exhaustion: hello.txt opened by fresh fids until refused. */
    int e = 0, err;
    uint32_t opened = 0, first = p9.next_fid;
    while (opened < OPEN_MAX) {
        uint32_t fid = walk1("hello.txt", &err);
        if (err == P9_TIMEOUT) return 1;
        if (err) {
            e = err;
            break;
        }
        e = lopen(fid, O_RDONLY_);
        if (e == P9_TIMEOUT) return 1;
        if (e) break;
        opened++;
    }
    puts_("PROBE: p9 bad case=open_exhaustion");
    put_kv_dec(" opened=", opened);
    put_kv_err(" error=", e);
    putc_('\n');
    uint32_t clunk_errors = 0;
    for (uint32_t f = first; f < p9.next_fid; f++) {
        int c = clunk(f);
        if (c == P9_TIMEOUT) return 1;
        if (c) clunk_errors++;
    }
    /* fid_exhaustion: clones of the root until refused. */
    first = p9.next_fid;
    uint32_t fids = 0;
    const char *none[1] = {0};
    e = 0;
    while (fids < FIDS_MAX) {
        uint32_t n;
        e = walk(ROOT_FID, new_fid(), none, &n, 0);
        if (e == P9_TIMEOUT) return 1;
        if (e) {
            p9.next_fid--;
            break;
        }
        fids++;
    }
    puts_("PROBE: p9 bad case=fid_exhaustion");
    put_kv_dec(" fids=", fids);
    put_kv_err(" error=", e);
    putc_('\n');
    for (uint32_t f = first; f < p9.next_fid; f++) {
        int c = clunk(f);
        if (c == P9_TIMEOUT) return 1;
        if (c) clunk_errors++;
    }
    /* the device serves as before */
    uint32_t fid = walk1("hello.txt", &err), n = 0;
    e = err;
    if (!e) e = lopen(fid, O_RDONLY_);
    if (!e) e = read_small(fid, 0, SMALL_READ, &n);
    if (e == P9_TIMEOUT) return 1;
    if (fid != NOFID && clunk(fid)) clunk_errors++;
    puts_("PROBE: p9 bad case=after_exhaustion");
    put_kv_err(" error=", e);
    put_kv_dec(" clunk_errors=", clunk_errors);
    putc_('\n');
    return 0;
}

static void p9_test(void) {
    uint8_t root_qid[13];
    p9.next_fid = 1;
    int e = version();
    if (e == P9_TIMEOUT) return;
    puts_("PROBE: p9 version");
    put_kv_err(" error=", e);
    put_kv_dec(" msize=", p9.msize);
    puts_(" version=");
    if (!e && p9.rlen >= 6) {
        uint32_t len = get16(p9.rbody + 4);
        for (uint32_t i = 0; i < len && 6 + i < p9.rlen && i < 32; i++) putc_((char)p9.rbody[6 + i]);
    }
    putc_('\n');
    e = attach(root_qid);
    if (e == P9_TIMEOUT) return;
    put_kv_err("PROBE: p9 attach error=", e);
    put_kv_hex(" qid_type=", e ? 0 : root_qid[0]);
    putc_('\n');
    if (e) return;
    const char *hello[] = {"hello.txt", 0}, *inner[] = {"dir", "inner.txt", 0};
    if (t_read(hello, "hello.txt") || t_bigread() || t_read(inner, "dir/inner.txt") || t_readdir()) return;
    if (p9.rw ? t_write() : t_readonly()) return;
    if (t_escapes(root_qid) || t_bad()) return;
    puts_("PROBE: p9 done\n");
}

void p9_probe(const char *cmdline, uint64_t rsdp_hint, const char *mode) {
    int list = probe_word_is(mode, "list");
    if (!list && !probe_word_is(mode, "test")) {
        puts_("PROBE: p9 failed unknown-mode\n");
        return;
    }
    const char *rw = probe_cmdline_arg(cmdline, "probe.p9_rw");
    p9.rw = rw && probe_word_is(rw, "1");
    int count = 0, after = -1;
    for (;;) {
        int n = probe_virtio_next(cmdline, rsdp_hint, VIRTIO_ID_9P, after, &p9.base, &p9.gsi);
        if (n < 0) break;
        after = p9.n = n;
        const char *why = p9_setup();
        if (why) {
            puts_("PROBE: p9 failed ");
            puts_(why);
            put_kv_dec(" dev=", (uint64_t)n);
            put_kv_hex(" dev_status=", vm_read(p9.base, R_STATUS));
            putc_('\n');
            vm_reset(p9.base);
            return;
        }
        p9_line();
        count++;
        if (!list) {
            p9_test();
            vm_reset(p9.base);
            return;
        }
        vm_reset(p9.base);
    }
    if (list) {
        put_kv_dec("PROBE: p9 list count=", (uint64_t)count);
        putc_('\n');
    } else {
        puts_("PROBE: p9 failed no-device\n");
    }
}
