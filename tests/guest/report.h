/* How the share clients (fs.c, p9.c) report: probe.c's printing under short names, key=value
 * fields, negative errnos, the data= text of what a device gave, and the FNV-1a hash the host
 * checks big reads with (as probe.c's fnv1a). Static inline: each file gets its own copy. */
#ifndef PROBE_REPORT_H
#define PROBE_REPORT_H
#include <stdint.h>

#include "net.h" /* probe.c's helpers */

#define puts_ probe_puts
#define putc_ probe_putc
#define put_hex probe_put_hex
#define put_dec probe_put_dec

#define DATA_MAX 256 /* bytes of data= shown */
#define FNV_INIT 0xcbf29ce484222325ull

static inline uint32_t slen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline uint64_t fnv1a(uint64_t h, const uint8_t *p, uint32_t n) {
    while (n--) h = (h ^ *p++) * 0x100000001b3ull;
    return h;
}

static inline void put_err(int e) {
    if (e < 0) {
        putc_('-');
        put_dec((uint64_t)-(int64_t)e);
    } else put_dec((uint64_t)e);
}
static inline void put_kv_err(const char *key, int e) { puts_(key); put_err(e); }
static inline void put_kv_dec(const char *key, uint64_t v) { puts_(key); put_dec(v); }
static inline void put_kv_hex(const char *key, uint64_t v) { puts_(key); put_hex(v); }

/* Ends a report line, with " data=<text>" first when there are bytes to show: printable ASCII
 * as it is, "\n" for a newline, "\\" for a backslash and "\xHH" for any other byte. */
static inline void end_line(const uint8_t *p, uint32_t n) {
    if (n) {
        puts_(" data=");
        for (uint32_t i = 0; i < n && i < DATA_MAX; i++) {
            uint8_t c = p[i];
            if (c == '\n') puts_("\\n");
            else if (c == '\\') puts_("\\\\");
            else if (c >= 0x20 && c < 0x7f) putc_((char)c);
            else {
                puts_("\\x");
                putc_("0123456789abcdef"[c >> 4]);
                putc_("0123456789abcdef"[c & 15]);
            }
        }
    }
    putc_('\n');
}

#endif
