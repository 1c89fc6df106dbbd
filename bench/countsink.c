/* A counting sink for bench/peers.py: a TCP syslog stream or HTTP/1.1 POSTs.
   Counts bench markers "t=<send time> s=<conn>:<seq>" (unique per connection,
   repeats, holes, send -> receipt latency) and " lg=" markers, cheaply. Every
   tenth of a second with a marker later than --late-ms is kept ("late_windows"), so
   that a latency tail can be told apart: one stall, or lines late all along. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXCONN 1000
#define READ_SIZE (256 * 1024)
#define EXPS 10     /* latency exponents 10^-3 .. 10^6 ms, 900 three-digit mantissas each */
#define WINDOW 0.1   /* seconds: the late windows' length */
#define MAXLATE 4096 /* late windows kept; later ones are only counted */

enum { HEAD, BODY, SIZE, CHUNK, TRAILER };

typedef struct {
    int fd, state;
    char *buf, *body;
    size_t len, cap, blen, bcap;
    long long need, count; /* count: Logplex-Msg-Count, -1 when absent */
} conn_t;

static int http_mode;
static const char *stats_path;
static double interval = 0.25;
static volatile sig_atomic_t stopping;
static long long messages, marked, uniq, duplicates, out_of_order, loggen, nbytes, requests, connections,
    bad_markers;
static double first_at, last_at;
static unsigned char *bitmap[MAXCONN];
static long long bitlen[MAXCONN], top[MAXCONN];
static long long hist[EXPS * 900 + 2];
/* The current window: markers seen, how many were late, the latest; and the late intervals. */
static double late_ms = 20;
static long long win_marked, win_late;
static double win_max_ms;
static struct { double end; long long late, marked; double max_ms; } late_win[MAXLATE];
static long long late_windows;

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *grow(void *p, size_t *cap, size_t want) {
    if (want <= *cap) return p;
    size_t c = *cap ? *cap : 4096;
    while (c < want) c *= 2;
    p = realloc(p, c);
    if (!p) { perror("realloc"); exit(1); }
    *cap = c;
    return p;
}

/* Index of a latency in ms rounded to 3 significant digits, as Python's "%.3g". */
static int bucket(double ms) {
    if (ms <= 0) return 0;
    int e = (int)floor(log10(ms));
    if (e < -3) e = -3;
    if (e > 6) e = 6;
    double scale = pow(10, e - 2);
    long m = lround(ms / scale);
    if (m >= 1000) { m = 100; e++; scale *= 10; }
    if (e > 6) { e = 6; m = 999; }
    if (m < 100) m = 100;
    return 1 + (e + 3) * 900 + (int)(m - 100);
}

static double bucket_ms(int i) {
    if (i == 0) return 0;
    i--;
    int e = i / 900 - 3;
    int m = i % 900 + 100;
    return m * pow(10, e - 2);
}

static void mark(int c, long long s) {
    if (s >= bitlen[c]) {
        long long n = bitlen[c] ? bitlen[c] : 1 << 16;
        while (n <= s) n *= 2;
        bitmap[c] = realloc(bitmap[c], n);
        if (!bitmap[c]) { perror("realloc"); exit(1); }
        memset(bitmap[c] + bitlen[c], 0, n - bitlen[c]);
        bitlen[c] = n;
    }
    if (bitmap[c][s]) { duplicates++; return; }
    bitmap[c][s] = 1;
    uniq++;
    if (s < top[c]) out_of_order++;
    else top[c] = s;
}

/* Parse "t=DIGITS.DIGITS s=DIGITS:DIGITS " at p (just past "t="); the end of it, NULL if incomplete
   before end, or p itself if it is not a marker. */
static const char *marker(const char *p, const char *end, double now, const char **last_t, size_t *last_tlen,
                          int *last_b, double *last_ms) {
    const char *t = p;
    while (p < end && isdigit((unsigned char)*p)) p++;
    if (p < end && *p == '.') { p++; while (p < end && isdigit((unsigned char)*p)) p++; }
    size_t tlen = p - t;
    if (p + 3 > end) return NULL;
    if (p[0] != ' ' || p[1] != 's' || p[2] != '=') return t;
    p += 3;
    long c = 0; int digits = 0;
    while (p < end && isdigit((unsigned char)*p)) { c = c * 10 + (*p++ - '0'); digits++; }
    if (p >= end) return NULL;
    if (*p != ':' || !digits || c >= MAXCONN) return t;
    p++;
    long long s = 0; digits = 0;
    while (p < end && isdigit((unsigned char)*p)) { s = s * 10 + (*p++ - '0'); digits++; }
    if (p >= end) return NULL;
    if (!digits) return t;
    /* A generator write shares one time stamp: reuse its bucket. */
    int b;
    double ms;
    if (*last_t && *last_tlen == tlen && memcmp(*last_t, t, tlen) == 0) b = *last_b, ms = *last_ms;
    else {
        ms = (now - strtod(t, NULL)) * 1000;
        b = bucket(ms);
        *last_t = t; *last_tlen = tlen; *last_b = b; *last_ms = ms;
    }
    hist[b]++;
    win_marked++;
    if (ms > late_ms) win_late++;
    if (ms > win_max_ms) win_max_ms = ms;
    marked++;
    mark((int)c, s);
    return p;
}

/* Count the markers in [p, end), a region of complete messages. */
static long long scan(const char *p, const char *end) {
    double now = now_wall();
    const char *last_t = NULL;
    size_t last_tlen = 0;
    int last_b = 0;
    double last_ms = 0;
    long long n = 0;
    if (first_at == 0) first_at = now;
    last_at = now;
    while (p < end) {
        const char *q = memchr(p, '=', end - p);
        if (!q) break;
        if (q - p >= 2 && q[-1] == 't' && q[-2] == ' ') {
            const char *r = marker(q + 1, end, now, &last_t, &last_tlen, &last_b, &last_ms);
            if (!r || r == q + 1) { bad_markers++; p = q + 1; continue; }
            n++;
            p = r;
        } else if (q - p >= 3 && q[-1] == 'g' && q[-2] == 'l' && q[-3] == ' ') {
            loggen++;
            n++;
            p = q + 1;
        } else {
            p = q + 1;
        }
    }
    return n;
}

/* The complete frames at the start of [p, end) (octet-counted, or LF-terminated when a frame
   does not start with a count); returns where the first incomplete one starts. */
static const char *frames(const char *p, const char *end, long long *n) {
    long long k = 0;
    while (p < end) {
        if (*p == '\n' || *p == '\r' || *p == '\0') { p++; continue; }
        const char *q = p;
        long long len = 0;
        while (q < end && q - p < 11 && isdigit((unsigned char)*q)) len = len * 10 + (*q++ - '0');
        if (q >= end) break;
        if (q > p && *q == ' ') {
            if (len > end - q - 1) break;
            p = q + 1 + len;
        } else {
            const char *lf = memchr(p, '\n', end - p);
            if (!lf) break;
            p = lf + 1;
        }
        k++;
    }
    *n = k;
    return p;
}

static void account(const char *p, const char *end, long long frames) {
    nbytes += end - p;
    long long n = scan(p, end);
    messages += frames >= 0 ? frames : n;
}

static void write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) { usleep(100); continue; }
            return;
        }
        s += w; n -= w;
    }
}

static const char *header(const char *head, size_t len, const char *name) {
    size_t nl = strlen(name);
    for (const char *p = head; p + nl + 2 < head + len; p++) {
        if (p[0] == '\r' && p[1] == '\n' && strncasecmp(p + 2, name, nl) == 0 && p[2 + nl] == ':') {
            p += 3 + nl;
            while (*p == ' ') p++;
            return p;
        }
    }
    return NULL;
}

static void answer(conn_t *c, const char *body, size_t len) {
    long long frames = c->count;
    requests++;
    if (frames < 0 && len && body[0] == '<') { /* newline-delimited lines (syslog-ng http()) */
        frames = 0;
        for (const char *p = body; (p = memchr(p, '\n', body + len - p)); p++) frames++;
        if (body[len - 1] != '\n') frames++;
    }
    account(body, body + len, frames);
    static const char ok[] = "HTTP/1.1 204 No Content\r\n\r\n";
    write_all(c->fd, ok, sizeof ok - 1);
    c->state = HEAD;
}

/* Consume what is in c->buf; returns how many bytes were used. */
static size_t http_feed(conn_t *c) {
    char *b = c->buf;
    size_t pos = 0, len = c->len;
    for (;;) {
        if (c->state == HEAD) {
            char *e = memmem(b + pos, len - pos, "\r\n\r\n", 4);
            if (!e) return pos;
            size_t hl = e - (b + pos) + 2;
            const char *h = b + pos, *v;
            c->count = (v = header(h, hl, "logplex-msg-count")) ? atoll(v) : -1;
            if ((v = header(h, hl, "expect")) && strncasecmp(v, "100-continue", 12) == 0)
                write_all(c->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            v = header(h, hl, "transfer-encoding");
            if (v && strncasecmp(v, "chunked", 7) == 0) { c->state = SIZE; c->blen = 0; }
            else { c->state = BODY; v = header(h, hl, "content-length"); c->need = v ? atoll(v) : 0; }
            pos = e + 4 - b;
        } else if (c->state == BODY) {
            if ((long long)(len - pos) < c->need) return pos;
            answer(c, b + pos, c->need);
            pos += c->need;
        } else if (c->state == SIZE || c->state == TRAILER) {
            char *e = memmem(b + pos, len - pos, "\r\n", 2);
            if (!e) return pos;
            if (c->state == SIZE) {
                c->need = strtoll(b + pos, NULL, 16);
                c->state = c->need ? CHUNK : TRAILER;
                pos = e + 2 - b;
            } else {
                int empty = e == b + pos;
                pos = e + 2 - b;
                if (empty) answer(c, c->body, c->blen);
            }
        } else { /* CHUNK */
            if ((long long)(len - pos) < c->need + 2) return pos;
            c->body = grow(c->body, &c->bcap, c->blen + c->need);
            memcpy(c->body + c->blen, b + pos, c->need);
            c->blen += c->need;
            pos += c->need + 2;
            c->state = SIZE;
        }
    }
}

/* End the current window: keep it if a marker in it was late. */
static void close_window(double now) {
    if (win_late) {
        if (late_windows < MAXLATE)
            late_win[late_windows] = (typeof(late_win[0])){now, win_late, win_marked, win_max_ms};
        late_windows++;
    }
    win_marked = win_late = 0;
    win_max_ms = 0;
}

static void write_stats(int final) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", stats_path ? stats_path : "/dev/null");
    FILE *f = stats_path ? fopen(tmp, "w") : NULL;
    FILE *outs[2] = {f, final ? stdout : NULL};
    long long holes = 0, max_gap = 0, seen = 0;
    if (final) {
        for (int c = 0; c < MAXCONN; c++) {
            if (!bitlen[c]) continue;
            seen++;
            long long run = 0;
            for (long long s = 0; s <= top[c]; s++) {
                if (bitmap[c][s]) run = 0;
                else { holes++; if (++run > max_gap) max_gap = run; }
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        FILE *o = outs[k];
        if (!o) continue;
        fprintf(o, "{\"kind\": \"%s\", \"pid\": %d, \"final\": %s, \"messages\": %lld, \"unique\": %lld, "
                   "\"duplicates\": %lld, \"marked\": %lld, \"out_of_order\": %lld, \"loggen\": %lld, "
                   "\"bytes\": %lld, \"requests\": %lld, \"connections\": %lld, \"bad_markers\": %lld, "
                   "\"first_at\": %.6f, \"last_at\": %.6f, \"written_at\": %.6f, \"cpu_s\": %.3f",
                http_mode ? "http" : "syslog", getpid(), final ? "true" : "false", messages, uniq, duplicates,
                marked, out_of_order, loggen, nbytes, requests, connections, bad_markers, first_at, last_at,
                now_wall(), cpu);
        if (final) {
            long long total = 0, seen_n = 0;
            double p50 = -1, p90 = -1, p99 = -1, p999 = -1, mx = -1;
            for (int i = 0; i < EXPS * 900 + 2; i++) total += hist[i];
            for (int i = 0; i < EXPS * 900 + 2; i++) {
                if (!hist[i]) continue;
                seen_n += hist[i];
                if (p50 < 0 && seen_n >= 0.50 * total) p50 = bucket_ms(i);
                if (p90 < 0 && seen_n >= 0.90 * total) p90 = bucket_ms(i);
                if (p99 < 0 && seen_n >= 0.99 * total) p99 = bucket_ms(i);
                if (p999 < 0 && seen_n >= 0.999 * total) p999 = bucket_ms(i);
                mx = bucket_ms(i);
            }
            if (total)
                fprintf(o, ", \"connections_seen\": %lld, \"seq_holes\": %lld, \"max_seq_gap\": %lld, "
                           "\"latency_p50_ms\": %.4g, \"latency_p90_ms\": %.4g, \"latency_p99_ms\": %.4g, "
                           "\"latency_p999_ms\": %.4g, \"latency_max_ms\": %.4g",
                        seen, holes, max_gap, p50, p90, p99, p999, mx);
            else
                fprintf(o, ", \"connections_seen\": %lld, \"seq_holes\": %lld, \"max_seq_gap\": %lld, "
                           "\"latency_p50_ms\": null, \"latency_p90_ms\": null, \"latency_p99_ms\": null, "
                           "\"latency_p999_ms\": null, \"latency_max_ms\": null",
                        seen, holes, max_gap);
            /* [seconds after the first message, late markers, markers, latest ms] per late window */
            fprintf(o, ", \"late_ms\": %g, \"late_windows_total\": %lld, \"late_windows\": [", late_ms, late_windows);
            for (long long i = 0; i < late_windows && i < MAXLATE; i++)
                fprintf(o, "%s[%.3f, %lld, %lld, %.1f]", i ? ", " : "", late_win[i].end - first_at, late_win[i].late,
                        late_win[i].marked, late_win[i].max_ms);
            fprintf(o, "]");
        }
        fprintf(o, "}\n");
        fflush(o);
    }
    if (f) { fclose(f); rename(tmp, stats_path); }
}

static void on_signal(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "http")) http_mode = 1;
        else if (!strcmp(argv[i], "syslog")) http_mode = 0;
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--stats") && i + 1 < argc) stats_path = argv[++i];
        else if (!strcmp(argv[i], "--interval") && i + 1 < argc) interval = atof(argv[++i]);
        else if (!strcmp(argv[i], "--late-ms") && i + 1 < argc) late_ms = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: countsink http|syslog --port P [--stats PATH] [--interval S] [--late-ms MS]\n");
            return 2;
        }
    }
    for (int c = 0; c < MAXCONN; c++) top[c] = -1;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* 4096: a node with 1,000 drains to this sink may connect them all at once. */
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    write_stats(0);
    fprintf(stderr, "countsink: %s listening on 127.0.0.1:%d\n", http_mode ? "http" : "syslog", port);
    double next = now_wall() + interval, next_window = now_wall() + WINDOW;
    struct epoll_event evs[64];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 64, (int)(WINDOW * 1000));
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->count = -1;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                    connections++;
                }
                continue;
            }
            for (;;) {
                c->buf = grow(c->buf, &c->cap, c->len + READ_SIZE);
                ssize_t r = read(c->fd, c->buf + c->len, READ_SIZE);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                if (r <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    free(c->buf); free(c->body); free(c);
                    break;
                }
                c->len += r;
                size_t used;
                if (http_mode) used = http_feed(c);
                else {
                    long long n;
                    const char *stop = frames(c->buf, c->buf + c->len, &n);
                    used = stop - c->buf;
                    account(c->buf, stop, n);
                }
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
                if (r < READ_SIZE) break;
            }
        }
        double now = now_wall();
        if (now >= next_window) { close_window(now); next_window = now + WINDOW; }
        if (now >= next) { write_stats(0); next = now + interval; }
    }
    close_window(now_wall());
    write_stats(1);
    return 0;
}
