/*
 * vmm-agent: the guest agent of vmm-reference (see docs/agent.md for the protocol).
 *
 * Listens on AF_VSOCK port 52 (any CID), or on a UNIX socket with --listen-unix PATH, and
 * serves each connection in a forked child: PING, EXEC (run a command, stream its stdout and
 * stderr, feed its stdin, report its exit status, signal it on request), PUT and GET (copy
 * files and directory trees in and out). Frames are [u8 type][u32 le length][payload].
 *
 * Memory is bounded: at most one chunk (64 KiB) is buffered per direction; the child's pipes
 * are read only as fast as the socket takes the data.
 *
 * Built static (gcc -static -O2) so that it runs on any guest userland.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define AGENT_VERSION "vmm-agent 1"
#define DEFAULT_PORT 52
#define CHUNK 65536u
#define MAX_FRAME (1u << 20) /* control frames (EXEC, ENTRY, ...) */
#define HDR 5

enum {
    T_PING = 0x01, T_EXEC = 0x02, T_STDIN = 0x03, T_KILL = 0x04, T_PUT = 0x05, T_GET = 0x06,
    T_ENTRY = 0x07, T_DATA = 0x08, T_END = 0x09,
    T_PONG = 0x81, T_STDOUT = 0x82, T_STDERR = 0x83, T_EXIT = 0x84, T_STDIN_ACK = 0x85,
    T_OK = 0x86, T_ERROR = 0x87,
};

static unsigned char rx[MAX_FRAME + 1];

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int write_full(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int read_full(int fd, void *buf, size_t n) {
    unsigned char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return -1;
        p += r; n -= (size_t)r;
    }
    return 0;
}

static int send_frame2(int fd, int type, const void *a, size_t alen, const void *b, size_t blen) {
    unsigned char h[HDR];
    h[0] = (unsigned char)type;
    put_u32(h + 1, (uint32_t)(alen + blen));
    if (write_full(fd, h, HDR) < 0) return -1;
    if (alen && write_full(fd, a, alen) < 0) return -1;
    if (blen && write_full(fd, b, blen) < 0) return -1;
    return 0;
}

static int send_frame(int fd, int type, const void *p, size_t n) {
    return send_frame2(fd, type, p, n, NULL, 0);
}

static int send_error(int fd, const char *fmt, ...) {
    char msg[PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_frame(fd, T_ERROR, msg, strlen(msg));
}

/* Read one frame into rx (NUL-terminated after the payload); -1 on EOF, error or oversize. */
static int recv_frame(int fd, int *type, uint32_t *len) {
    unsigned char h[HDR];
    if (read_full(fd, h, HDR) < 0) return -1;
    *type = h[0];
    *len = get_u32(h + 1);
    if (*len > MAX_FRAME) {
        send_error(fd, "frame of %u bytes is over the limit of %u", *len, MAX_FRAME);
        return -1;
    }
    if (read_full(fd, rx, *len) < 0) return -1;
    rx[*len] = 0;
    return 0;
}

static void set_nonblock(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Split a payload of NUL-terminated strings; returns how many were found (at most max). */
static int split_strings(char *p, size_t len, char **out, int max) {
    int n = 0;
    size_t i = 0;
    while (i < len && n < max) {
        char *s = p + i;
        size_t l = strnlen(s, len - i);
        if (i + l >= len) return -1; /* not NUL-terminated */
        out[n++] = s;
        i += l + 1;
    }
    return n;
}

/* ---- EXEC ---- */

static void child_exec(char *cwd, char **argv, char **env, uint32_t envc, uint32_t flags) {
    sigset_t none;
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (flags & 1) clearenv();
    for (uint32_t i = 0; i < envc; i++) {
        char *eq = strchr(env[i], '=');
        if (eq) {
            *eq = 0;
            setenv(env[i], eq + 1, 1);
        } else {
            unsetenv(env[i]);
        }
    }
    if (cwd[0] && chdir(cwd) < 0) {
        dprintf(2, "vmm-agent: cannot change directory to %s: %s\n", cwd, strerror(errno));
        _exit(125);
    }
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "vmm-agent: %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* Run a command; returns 0 when the request is done (EXIT sent), -1 to drop the connection. */
static int do_exec(int conn, uint32_t len) {
    if (len < 12) return send_error(conn, "EXEC: payload too short"), -1;
    uint32_t argc = get_u32(rx), envc = get_u32(rx + 4), flags = get_u32(rx + 8);
    if (argc < 1 || argc > len || envc > len)
        return send_error(conn, "EXEC: bad argc=%u envc=%u", argc, envc), -1;
    char **strs = calloc((size_t)argc + envc + 2, sizeof(char *));
    if (!strs) return send_error(conn, "EXEC: out of memory"), -1;
    int n = split_strings((char *)rx + 12, len - 12, strs, (int)(1 + argc + envc));
    if (n != (int)(1 + argc + envc)) {
        free(strs);
        return send_error(conn, "EXEC: expected %u strings", 1 + argc + envc), -1;
    }
    char *cwd = strs[0];
    char **argv = strs + 1;
    char **env = calloc((size_t)envc + 1, sizeof(char *));
    if (!env) return send_error(conn, "EXEC: out of memory"), -1;
    memcpy(env, strs + 1 + argc, envc * sizeof(char *));
    argv[argc] = NULL; /* strs[1 + argc] is overwritten by the env copy's source; copied above */

    int in_p[2], out_p[2], err_p[2];
    if (pipe2(in_p, O_CLOEXEC) < 0 || pipe2(out_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0)
        return send_error(conn, "EXEC: pipe: %s", strerror(errno)), -1;
    pid_t pid = fork();
    if (pid < 0) return send_error(conn, "EXEC: fork: %s", strerror(errno)), -1;
    if (pid == 0) {
        setsid();
        dup2(in_p[0], 0);
        dup2(out_p[1], 1);
        dup2(err_p[1], 2);
        child_exec(cwd, argv, env, envc, flags);
    }
    free(strs);
    free(env);
    close(in_p[0]); close(out_p[1]); close(err_p[1]);
    int stdin_fd = in_p[1], out_fd = out_p[0], err_fd = err_p[0];
    set_nonblock(stdin_fd, 1); set_nonblock(out_fd, 1); set_nonblock(err_fd, 1);
    set_nonblock(conn, 1);

    static unsigned char obuf[HDR + CHUNK], ibuf[HDR + CHUNK], sbuf[CHUNK];
    size_t olen = 0, ooff = 0, ilen = 0, slen = 0, soff = 0;
    int ack_pending = 0, stdin_eof = 0, exited = 0, final = 0, turn = 0, status = 0, ret = 0;

    for (;;) {
        if (!exited) {
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid) exited = 1;
        }
        if (olen == 0) {
            if (ack_pending) {
                obuf[0] = T_STDIN_ACK; put_u32(obuf + 1, 0); olen = HDR; ack_pending = 0;
            } else if (exited && out_fd < 0 && err_fd < 0) {
                int32_t code = WIFEXITED(status) ? WEXITSTATUS(status)
                             : WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
                obuf[0] = T_EXIT; put_u32(obuf + 1, 4); put_u32(obuf + HDR, (uint32_t)code);
                olen = HDR + 4; final = 1;
            }
        }
        struct pollfd p[4];
        int np = 0, ic = -1, io = -1, ie = -1, is = -1;
        p[np] = (struct pollfd){conn, (short)(POLLIN | (olen ? POLLOUT : 0)), 0}; ic = np++;
        if (olen == 0 && out_fd >= 0) { p[np] = (struct pollfd){out_fd, POLLIN, 0}; io = np++; }
        if (olen == 0 && err_fd >= 0) { p[np] = (struct pollfd){err_fd, POLLIN, 0}; ie = np++; }
        if (stdin_fd >= 0 && slen > soff) { p[np] = (struct pollfd){stdin_fd, POLLOUT, 0}; is = np++; }
        int timeout = (!exited && out_fd < 0 && err_fd < 0) ? 50 : (!exited ? 1000 : -1);
        if (poll(p, (nfds_t)np, timeout) < 0) {
            if (errno == EINTR) continue;
            ret = -1; break;
        }
        /* The client's frames: STDIN chunks (one at a time, acknowledged), KILL. */
        if (p[ic].revents & (POLLIN | POLLHUP | POLLERR)) {
            size_t need = ilen < HDR ? HDR - ilen : HDR + get_u32(ibuf + 1) - ilen;
            ssize_t r = read(conn, ibuf + ilen, need);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { ret = -1; break; }
            if (r > 0) {
                ilen += (size_t)r;
                if (ilen == HDR && get_u32(ibuf + 1) > CHUNK) {
                    send_error(conn, "frame over %u bytes during EXEC", CHUNK);
                    ret = -1; break;
                }
                if (ilen >= HDR && ilen == HDR + get_u32(ibuf + 1)) {
                    uint32_t flen = get_u32(ibuf + 1);
                    int t = ibuf[0];
                    ilen = 0;
                    if (t == T_STDIN) {
                        if (flen == 0) {
                            stdin_eof = 1;
                            if (slen == soff) close_fd(&stdin_fd);
                        } else if (slen > soff) {
                            send_error(conn, "STDIN sent before the previous one was acknowledged");
                            ret = -1; break;
                        } else if (stdin_fd < 0) {
                            ack_pending = 1; /* the command closed its stdin: drop the data */
                        } else {
                            memcpy(sbuf, ibuf + HDR, flen); slen = flen; soff = 0;
                        }
                    } else if (t == T_KILL) {
                        int sig = flen >= 4 ? (int)get_u32(ibuf + HDR) : SIGKILL;
                        if (!exited) kill(-pid, sig);
                    } else {
                        send_error(conn, "unexpected frame type 0x%02x during EXEC", t);
                        ret = -1; break;
                    }
                }
            }
        }
        if (p[ic].revents & POLLOUT) {
            ssize_t w = write(conn, obuf + ooff, olen - ooff);
            if (w < 0 && errno != EAGAIN && errno != EINTR) { ret = -1; break; }
            if (w > 0) {
                ooff += (size_t)w;
                if (ooff == olen) {
                    olen = ooff = 0;
                    if (final) break;
                }
            }
        }
        if (is >= 0 && p[is].revents) {
            ssize_t w = write(stdin_fd, sbuf + soff, slen - soff);
            if (w < 0 && errno != EAGAIN && errno != EINTR) { /* EPIPE: the command is done with stdin */
                close_fd(&stdin_fd); slen = soff = 0; ack_pending = 1;
            } else if (w > 0) {
                soff += (size_t)w;
                if (soff == slen) {
                    slen = soff = 0; ack_pending = 1;
                    if (stdin_eof) close_fd(&stdin_fd);
                }
            }
        }
        /* Read a pipe only when the previous chunk has gone out; alternate between the two. */
        int order[2] = {turn ? ie : io, turn ? io : ie};
        for (int k = 0; k < 2 && olen == 0; k++) {
            int i = order[k];
            if (i < 0 || !p[i].revents) continue;
            int *fd = (i == io) ? &out_fd : &err_fd;
            ssize_t r = read(*fd, obuf + HDR, CHUNK);
            if (r > 0) {
                obuf[0] = (unsigned char)(i == io ? T_STDOUT : T_STDERR);
                put_u32(obuf + 1, (uint32_t)r);
                olen = HDR + (size_t)r;
                turn = (i == io);
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                close_fd(fd);
            }
        }
    }
    close_fd(&stdin_fd); close_fd(&out_fd); close_fd(&err_fd);
    if (ret < 0 && !exited) {
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    set_nonblock(conn, 0);
    return ret;
}

/* ---- file transfer ---- */

/* A relative path of an entry: empty (the root itself) or components without ".", ".." or "". */
static int valid_rel(const char *rel) {
    if (!rel[0]) return 1;
    if (rel[0] == '/') return 0;
    const char *s = rel;
    while (*s) {
        const char *e = strchrnul(s, '/');
        size_t l = (size_t)(e - s);
        if (l == 0 || (l == 1 && s[0] == '.') || (l == 2 && s[0] == '.' && s[1] == '.')) return 0;
        s = *e ? e + 1 : e;
        if (*e && !*s) return 0; /* trailing slash */
    }
    return 1;
}

struct dirmode { char *path; mode_t mode; };

/* Receive a tree (ENTRY/DATA.../END) into dest; reply OK or the first ERROR. */
static int do_put(int conn, uint32_t len) {
    char *strs[2];
    if (split_strings((char *)rx, len, strs, 2) != 2) return send_error(conn, "PUT: expected dest and name"), -1;
    char root[PATH_MAX], name[NAME_MAX + 1];
    struct stat st;
    snprintf(name, sizeof name, "%s", strs[1]);
    if (strchr(name, '/') || !strcmp(name, "..")) name[0] = 0;
    if (name[0] && stat(strs[0], &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(root, sizeof root, "%s/%s", strs[0], name);
    else
        snprintf(root, sizeof root, "%s", strs[0]);
    char err[PATH_MAX + 128] = "";
    int fd = -1;
    mode_t fmode = 0;
    char fpath[PATH_MAX] = "";
    struct dirmode *dirs = NULL;
    size_t ndirs = 0;
    for (;;) {
        int type;
        uint32_t n;
        if (recv_frame(conn, &type, &n) < 0) {
            if (fd >= 0) close(fd);
            for (size_t i = 0; i < ndirs; i++) free(dirs[i].path);
            free(dirs);
            return -1;
        }
        if (type == T_ENTRY) {
            if (n < 6) return send_error(conn, "PUT: short ENTRY"), -1;
            char kind = (char)rx[0];
            mode_t mode = get_u32(rx + 1) & 07777;
            char *s[2];
            int ns = split_strings((char *)rx + 5, n - 5, s, 2);
            if (ns < 1 || !valid_rel(s[0])) return send_error(conn, "PUT: bad entry path"), -1;
            char path[PATH_MAX];
            if (snprintf(path, sizeof path, "%s%s%s", root, s[0][0] ? "/" : "", s[0]) >= (int)sizeof path) {
                if (!err[0]) snprintf(err, sizeof err, "%s/%s: path too long", root, s[0]);
                continue;
            }
            if (fd >= 0) { close(fd); fd = -1; }
            if (kind == 'f') {
                fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (fd < 0 && !err[0]) snprintf(err, sizeof err, "%s: %s", path, strerror(errno));
                fmode = mode;
                snprintf(fpath, sizeof fpath, "%s", path);
            } else if (kind == 'd') {
                if (mkdir(path, 0700) < 0 && !(errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))) {
                    if (!err[0]) snprintf(err, sizeof err, "%s: %s", path, strerror(errno));
                } else {
                    struct dirmode *d = realloc(dirs, (ndirs + 1) * sizeof *dirs);
                    if (d) {
                        dirs = d;
                        dirs[ndirs].path = strdup(path);
                        dirs[ndirs].mode = mode;
                        if (dirs[ndirs].path) ndirs++;
                    }
                }
            } else if (kind == 'l' && ns == 2) {
                if (symlink(s[1], path) < 0 && !(errno == EEXIST && unlink(path) == 0 && symlink(s[1], path) == 0)) {
                    if (!err[0]) snprintf(err, sizeof err, "%s: %s", path, strerror(errno));
                }
            } else {
                return send_error(conn, "PUT: bad entry kind %c", kind), -1;
            }
        } else if (type == T_DATA) {
            if (n == 0) {
                if (fd >= 0) {
                    if (fchmod(fd, fmode) < 0 && !err[0]) snprintf(err, sizeof err, "%s: chmod: %s", fpath, strerror(errno));
                    if (close(fd) < 0 && !err[0]) snprintf(err, sizeof err, "%s: %s", fpath, strerror(errno));
                    fd = -1;
                }
            } else if (fd >= 0 && write_full(fd, rx, n) < 0) {
                if (!err[0]) snprintf(err, sizeof err, "%s: %s", fpath, strerror(errno));
                close(fd);
                fd = -1;
            }
        } else if (type == T_END) {
            if (fd >= 0) close(fd);
            for (size_t i = ndirs; i-- > 0;) {
                if (chmod(dirs[i].path, dirs[i].mode) < 0 && !err[0])
                    snprintf(err, sizeof err, "%s: chmod: %s", dirs[i].path, strerror(errno));
                free(dirs[i].path);
            }
            free(dirs);
            if (err[0]) return send_error(conn, "%s", err);
            return send_frame(conn, T_OK, NULL, 0);
        } else {
            return send_error(conn, "PUT: unexpected frame type 0x%02x", type), -1;
        }
    }
}

static int send_entry(int conn, char kind, mode_t mode, const char *rel, const char *target) {
    unsigned char h[5];
    h[0] = (unsigned char)kind;
    put_u32(h + 1, mode & 07777);
    size_t rl = strlen(rel) + 1, tl = target ? strlen(target) + 1 : 0;
    unsigned char hdr[HDR];
    hdr[0] = T_ENTRY;
    put_u32(hdr + 1, (uint32_t)(5 + rl + tl));
    if (write_full(conn, hdr, HDR) < 0 || write_full(conn, h, 5) < 0 || write_full(conn, rel, rl) < 0) return -1;
    if (tl && write_full(conn, target, tl) < 0) return -1;
    return 0;
}

/* Returns 0 if sent, 1 if an ERROR was sent (stop), -1 if the connection failed. */
static int get_tree(int conn, const char *path, const char *rel, int top) {
    struct stat st;
    if ((top ? stat(path, &st) : lstat(path, &st)) < 0)
        return send_error(conn, "%s: %s", path, strerror(errno)) < 0 ? -1 : 1;
    if (S_ISREG(st.st_mode)) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return send_error(conn, "%s: %s", path, strerror(errno)) < 0 ? -1 : 1;
        if (send_entry(conn, 'f', st.st_mode, rel, NULL) < 0) { close(fd); return -1; }
        static unsigned char buf[CHUNK];
        for (;;) {
            ssize_t r = read(fd, buf, CHUNK);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                int e = errno;
                close(fd);
                return send_error(conn, "%s: %s", path, strerror(e)) < 0 ? -1 : 1;
            }
            if (send_frame(conn, T_DATA, buf, (size_t)r) < 0) { close(fd); return -1; }
            if (r == 0) break;
        }
        close(fd);
        return 0;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t l = readlink(path, target, sizeof target - 1);
        if (l < 0) return send_error(conn, "%s: %s", path, strerror(errno)) < 0 ? -1 : 1;
        target[l] = 0;
        return send_entry(conn, 'l', 0777, rel, target);
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return send_error(conn, "%s: %s", path, strerror(errno)) < 0 ? -1 : 1;
        if (send_entry(conn, 'd', st.st_mode, rel, NULL) < 0) { closedir(d); return -1; }
        struct dirent *e;
        int ret = 0;
        while (ret == 0 && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char cp[PATH_MAX], cr[PATH_MAX];
            if (snprintf(cp, sizeof cp, "%s/%s", path, e->d_name) >= (int)sizeof cp ||
                snprintf(cr, sizeof cr, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name) >= (int)sizeof cr) {
                ret = send_error(conn, "%s/%s: path too long", path, e->d_name) < 0 ? -1 : 1;
                break;
            }
            ret = get_tree(conn, cp, cr, 0);
        }
        closedir(d);
        return ret;
    }
    if (top) return send_error(conn, "%s: not a regular file, directory or symlink", path) < 0 ? -1 : 1;
    return 0; /* devices, fifos and sockets inside a tree are skipped */
}

static int do_get(int conn, uint32_t len) {
    char *s[1];
    if (split_strings((char *)rx, len, s, 1) != 1) return send_error(conn, "GET: expected a path"), -1;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", s[0]);
    int r = get_tree(conn, path, "", 1);
    if (r < 0) return -1;
    if (r == 0) return send_frame(conn, T_END, NULL, 0);
    return 0;
}

/* ---- the server ---- */

static void serve(int conn) {
    for (;;) {
        int type;
        uint32_t len;
        if (recv_frame(conn, &type, &len) < 0) return;
        int r = 0;
        switch (type) {
        case T_PING: r = send_frame(conn, T_PONG, AGENT_VERSION, strlen(AGENT_VERSION)); break;
        case T_EXEC: r = do_exec(conn, len); break;
        case T_PUT: r = do_put(conn, len); break;
        case T_GET: r = do_get(conn, len); break;
        case T_STDIN: case T_KILL: break; /* late frames of a finished EXEC */
        default: send_error(conn, "unknown request type 0x%02x", type); r = -1;
        }
        if (r < 0) return;
    }
}

static void usage(void) {
    fprintf(stderr, "usage: vmm-agent [--port N] [--listen-unix PATH]\n"
                    "Serves vmm-reference's guest-agent protocol on AF_VSOCK port N (default %d),\n"
                    "or on the UNIX socket PATH (for tests on the host).\n", DEFAULT_PORT);
}

int main(int argc, char **argv) {
    unsigned port = DEFAULT_PORT;
    const char *unix_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = (unsigned)strtoul(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--listen-unix") && i + 1 < argc) unix_path = argv[++i];
        else if (!strcmp(argv[i], "--version")) { puts(AGENT_VERSION); return 0; }
        else { usage(); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN); /* connection handlers are reaped automatically */
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
    if (!getenv("HOME")) setenv("HOME", "/root", 1);

    int ls;
    if (unix_path) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof a.sun_path) { fprintf(stderr, "vmm-agent: path too long\n"); return 1; }
        strcpy(a.sun_path, unix_path);
        ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0) {
            fprintf(stderr, "vmm-agent: %s: %s\n", unix_path, strerror(errno));
            return 1;
        }
    } else {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
        ls = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0) {
            fprintf(stderr, "vmm-agent: vsock port %u: %s\n", port, strerror(errno));
            return 1;
        }
    }
    if (listen(ls, 16) < 0) {
        fprintf(stderr, "vmm-agent: listen: %s\n", strerror(errno));
        return 1;
    }
    for (;;) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) { sleep(1); continue; }
            fprintf(stderr, "vmm-agent: accept: %s\n", strerror(errno));
            return 1;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(ls);
            signal(SIGCHLD, SIG_DFL);
            serve(c);
            _exit(0);
        }
        close(c);
    }
}
