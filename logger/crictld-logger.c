/*
 * crictld-logger: the container log writer and attach server. It outlives crictld (the shim
 * or a daemonized launch starts it, not the daemon's process tree), so logs keep flowing and
 * `crictl attach` keeps working while crictld is down or restarting.
 *
 * Each output line goes to the CRI log file as
 *
 *     <RFC3339Nano time> <stdout|stderr> <F|P> <content>\n
 *
 * where P marks a partial line: a line longer than 16 KiB is cut into P chunks ended by an F
 * chunk, and output that ends without a newline is written with P. SIGUSR1 reopens the log
 * path (kubelet renamed the file and called ReopenContainerLog).
 *
 * No torn records: a record is one write() (readers never see half of one), a write that
 * fails part-way is truncated away, and a tail an earlier writer left without its '\n' (it
 * was killed mid-write) is dropped when the log is opened, so a new record is never glued
 * onto half of an old one. This assumes one logger writes a log file at a time.
 *
 * Usage: crictld-logger --log PATH [--pidfile PATH] [--attach DIR]
 *            [--stdout-fifo PATH] [--stderr-fifo PATH] [--stdin-fifo PATH]
 *            [--stdin-once 1|0] [--daemonize 1|0]
 * Options are NAME VALUE pairs in any order: the shim passes binary:// query arguments that
 * way, in map order, and drops empty values, so even flags take a value.
 *
 * Shim mode (binary:// log URI): stdout on fd 3, stderr on fd 4; closing fd 5 tells the shim
 * we are ready. The runc shim gives a non-TTY container no stdin in this mode.
 * FIFO mode (--stdout-fifo/--stderr-fifo, usually with --daemonize 1): crictld starts us for
 * containers that need stdin; we open the FIFOs before the shim does (O_NONBLOCK, so the open
 * does not wait for it; Linux reports no POLLHUP until a writer has come and gone). We hold the
 * stdin FIFO O_RDWR for the container's lifetime, so it never loses its last writer (EOF for
 * the container, and the end of a TTY's console) while crictld restarts. Ending the
 * container's stdin for StdinOnce is crictld's job too (containerd CloseIO): the shim may keep
 * the FIFO open itself, so our closing it alone is not enough. --daemonize forks,
 * and the launcher exits 0 only once everything is open and the pidfile written, or 1 with the
 * child's error, so crictld needs no fd-5 handshake of its own.
 *
 * Attach (--attach DIR): a SOCK_SEQPACKET socket at DIR/attach, mode 0600, modelled on CRI-O's
 * conmon so the wire format is a known one. Bound and connected through /proc/self/fd/N/attach
 * because DIR may exceed the 108-byte sun_path.
 *   logger -> client: one message per chunk, 1 type byte (2 stdout, 3 stderr) + 1..8192 raw
 *     output bytes, as read and only while attached (the log file is the history).
 *   client -> logger: each message is raw stdin bytes. End of stream (shutdown(SHUT_WR) or
 *     close) stops reading that client; with --stdin-once 1 the first such end closes stdin
 *     for good (kubelet's StdinOnce). Output is still sent until the client closes.
 * The output path never blocks on a client, so a stuck attach cannot stall the container or
 * its log: sends are non-blocking and a client whose send would block is dropped. Stdin that
 * does not fit in the FIFO is held (one client message) and clients are not read until the
 * FIFO drains. At most 64 clients; when every output stream has ended the socket and pidfile
 * are removed and each client's socket is closed, which is how clients learn the container
 * exited.
 *
 * Written in C because one runs per container: a Python interpreter each cost ~5 MB and
 * ~50 ms of StartContainer at 300 containers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16 * 1024)
#define READ_CHUNK 65536
#define MAX_CLIENTS 64
#define MSG_PAYLOAD 8192                /* conmon's limit per attach message */
#define CLIENT_SNDBUF (1024 * 1024)     /* slack before a slow client is dropped */
#define TAIL_SCAN (64 * 1024)           /* > any record: MAX_LINE + a ~45-byte header */
#define HEAD_SIZE 64                    /* a record's time, stream and tag */
#define OUT_SIZE (HEAD_SIZE + MAX_LINE + 1)

static volatile sig_atomic_t reopen_requested;
static const char *log_path;
static int log_fd = -1;
/* The log may end inside a record (repairing it failed): nothing is appended until
 * repair_tail() succeeds, since a record written now would be glued onto the torn one. */
static int log_torn;

struct stream {
    int fd;
    const char *name;
    char *buf;
    size_t len;
    char type; /* attach message type */
};

struct client {
    int fd;      /* -1 once dropped; compacted away after each poll round */
    int reading; /* still a stdin source: no end of stream seen yet */
    int pidx;    /* its slot in this round's pollfd array, or -1 */
};

/* Memory: one logger runs per container (300 at 300 containers), so each page one touches is
 * 4 KiB of the node's memory, 1.2 MiB at that size. The output buffers are one anonymous
 * mapping made at start (map_buffers): its pages are zero-fill on demand, so a logger whose
 * container writes little keeps few of them. As static arrays they did the same, but sat in
 * .bss between this file's small variables and musl's, so the variables every logger writes
 * took three pages instead of one. No function keeps a large array on the stack either: a
 * page of stack touched once stays (the launcher's buffer is in a process that exits). An
 * idle logger keeps 12 KiB private (the data page, two of stack) where it kept 28-32. */
static char *stream_buf[2]; /* MAX_LINE + READ_CHUNK each */
static char *chunk;         /* READ_CHUNK */
static char *out;           /* a record: OUT_SIZE */
static char *msg;           /* an attach message: 1 + MSG_PAYLOAD */
static struct pollfd fds[4 + MAX_CLIENTS];

static int report_fd = 2; /* stderr, or the pipe to the --daemonize launcher */
static int attach_dir_fd = -1, listen_fd = -1;
static struct client clients[MAX_CLIENTS];
static int nclients;
static int stdin_fd = -1, stdin_once, stdin_closing;
static char *in_buf; /* stdin the FIFO had no room for: in_buf[in_off..in_len) */
static size_t in_off, in_len, in_cap;

static void on_usr1(int sig) { (void)sig; reopen_requested = 1; }

/* Makes the log end on a record boundary; 0 once it does. A tail with no final '\n' is a
 * record whose writer died mid-write (SIGKILL can cut even one write() short, between pages):
 * it is dropped, by truncating to just after the last '\n' (or to empty). */
static int repair_tail(int fd) {
    struct stat st;
    char buf[512]; /* rarely read: a log that exists at start, or one a failed write tore */
    if (fstat(fd, &st) < 0) return -1;
    if (!S_ISREG(st.st_mode)) return 0; /* /dev/null when the container has no log path */
    off_t end = st.st_size, pos = end;
    while (pos > 0 && end - pos < TAIL_SCAN) {
        size_t k = pos < (off_t)sizeof buf ? (size_t)pos : sizeof buf;
        if (pread(fd, buf, k, pos - (off_t)k) != (ssize_t)k) return -1;
        pos -= (off_t)k;
        for (size_t i = k; i-- > 0;)
            if (buf[i] == '\n')
                return pos + (off_t)i + 1 == end ? 0 : ftruncate(fd, pos + (off_t)i + 1);
    }
    if (pos == 0) return end == 0 ? 0 : ftruncate(fd, 0); /* a torn record and nothing else */
    /* No '\n' in the last TAIL_SCAN bytes: longer than any record we write, so this is not
     * one of our torn records but something else's data. End its line rather than destroy
     * it; the next record still starts on a line of its own. */
    return write(fd, "\n", 1) == 1 ? 0 : -1;
}

static int open_log(void) {
    /* O_RDWR: repair_tail() reads the tail */
    int fd = open(log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (fd < 0) {
        /* the directory may not exist yet */
        char dir[strlen(log_path) + 1];
        memcpy(dir, log_path, sizeof dir);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            for (char *p = dir + 1; *p; p++)
                if (*p == '/') { *p = '\0'; mkdir(dir, 0755); *p = '/'; }
            mkdir(dir, 0755);
        }
        fd = open(log_path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
    }
    if (fd >= 0) log_torn = repair_tail(fd) < 0; /* fd becomes log_fd */
    return fd;
}

/* Appends one whole record, or nothing. */
static void write_record(const char *data, size_t n) {
    if (log_torn && (log_torn = repair_tail(log_fd) < 0)) return; /* drop it: never glue */
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(log_fd, data + done, n - done);
        if (w > 0) { done += (size_t)w; continue; } /* short (a signal, or ENOSPC next) */
        if (w < 0 && errno == EINTR) continue;
        /* The rest cannot be written (nowhere to report it; keep draining the container's
         * output): take back the part that was, so the file ends on a record boundary. The
         * O_APPEND writes left the offset just past that part: no lseek/fstat per record. */
        if (done > 0) {
            off_t cur = lseek(log_fd, 0, SEEK_CUR);
            if (cur < (off_t)done || ftruncate(log_fd, cur - (off_t)done) < 0) log_torn = 1;
        }
        return;
    }
}

static void record(const struct stream *s, char tag, const char *content, size_t n) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(out, HEAD_SIZE, "%Y-%m-%dT%H:%M:%S", &tm);
    k += (size_t)snprintf(out + k, HEAD_SIZE - k, ".%09ldZ %s %c ", ts.tv_nsec, s->name, tag);
    /* one write per record: readers never see half of one (n <= MAX_LINE: see drain) */
    if (k + n + 1 > OUT_SIZE) return;
    memcpy(out + k, content, n);
    out[k + n] = '\n';
    write_record(out, k + n + 1);
}

/* Emits the complete lines (and 16 KiB chunks of over-long ones) held in the buffer. */
static void drain(struct stream *s, int final) {
    size_t start = 0;
    for (;;) {
        char *nl = memchr(s->buf + start, '\n', s->len - start);
        size_t avail = s->len - start;
        if (nl && (size_t)(nl - (s->buf + start)) <= MAX_LINE) {
            size_t n = (size_t)(nl - (s->buf + start));
            record(s, 'F', s->buf + start, n);
            start += n + 1;
        } else if (avail >= MAX_LINE) {
            record(s, 'P', s->buf + start, MAX_LINE);
            start += MAX_LINE;
        } else {
            break;
        }
    }
    if (final && s->len > start) {
        record(s, 'P', s->buf + start, s->len - start);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
}

/* An error before the ready signal: the message goes where the starter reads it, then exit 1. */
static void fail(const char *fmt, ...) {
    /* unbuffered (no buffer to keep): the starter reads to EOF, so pieces are fine */
    va_list ap;
    va_start(ap, fmt);
    vdprintf(report_fd, fmt, ap);
    va_end(ap);
    if (write(report_fd, "\n", 1) < 0) { /* nowhere else to say it */ }
    exit(1);
}

static int flag(const char *name, const char *value) {
    if (strcmp(value, "1") == 0) return 1;
    if (strcmp(value, "0") == 0) return 0;
    fprintf(stderr, "crictld-logger: %s takes 1 or 0, not \"%s\"\n", name, value);
    exit(2);
}

static int open_fifo(const char *path, int mode) {
    int fd = open(path, mode | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail("crictld-logger: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) fail("crictld-logger: %s: not a FIFO", path);
    return fd;
}

static void open_attach(const char *dir) {
    attach_dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (attach_dir_fd < 0) fail("crictld-logger: %s: %s", dir, strerror(errno));
    if (unlinkat(attach_dir_fd, "attach", 0) < 0 && errno != ENOENT)
        fail("crictld-logger: remove stale %s/attach: %s", dir, strerror(errno));
    listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) fail("crictld-logger: socket: %s", strerror(errno));
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/attach", attach_dir_fd);
    mode_t old = umask(0177); /* born 0600: no window where others could connect */
    int r = bind(listen_fd, (struct sockaddr *)&addr, sizeof addr);
    umask(old);
    if (r < 0) fail("crictld-logger: bind %s/attach: %s", dir, strerror(errno));
    if (listen(listen_fd, 16) < 0)
        fail("crictld-logger: listen %s/attach: %s", dir, strerror(errno));
}

static void drop(struct client *c) {
    close(c->fd);
    c->fd = -1;
}

static void accept_clients(void) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        if (nclients == MAX_CLIENTS) { close(fd); continue; }
        int size = CLIENT_SNDBUF;
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        clients[nclients].fd = fd;
        clients[nclients].reading = 1;
        clients[nclients].pidx = -1;
        nclients++;
    }
}

/* Raw output to every client, never waiting: a client with no room left is dropped. */
static void broadcast(char type, const char *data, size_t n) {
    if (nclients == 0) return;
    msg[0] = type;
    while (n > 0) {
        size_t k = n < MSG_PAYLOAD ? n : MSG_PAYLOAD;
        memcpy(msg + 1, data, k);
        for (int i = 0; i < nclients; i++) {
            if (clients[i].fd < 0) continue;
            ssize_t r;
            do r = send(clients[i].fd, msg, k + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            while (r < 0 && errno == EINTR);
            if (r < 0) drop(&clients[i]);
        }
        data += k;
        n -= k;
    }
}

/* Writes what is pending into the stdin FIFO; closes it once drained if stdin-once fired. */
static void flush_stdin(void) {
    while (in_off < in_len) {
        ssize_t w = write(stdin_fd, in_buf + in_off, in_len - in_off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return; /* full: wait for POLLOUT */
            break;                       /* cannot be delivered: drop it */
        }
        in_off += (size_t)w;
    }
    in_off = in_len = 0;
    if (stdin_closing) {
        close(stdin_fd);
        stdin_fd = -1;
    }
}

/* One message from a client; only called while nothing is pending for the stdin FIFO. */
static void read_client(struct client *c, short revents) {
    char probe[1];
    ssize_t n;
    if (stdin_fd < 0) {
        /* no stdin (never had one, or closed): MSG_TRUNC consumes and discards the message */
        n = recv(c->fd, probe, sizeof probe, MSG_DONTWAIT | MSG_TRUNC);
    } else {
        /* the message's full size, so a big one is never truncated */
        n = recv(c->fd, probe, sizeof probe, MSG_DONTWAIT | MSG_PEEK | MSG_TRUNC);
        if (n > 0 && (size_t)n > in_cap) {
            char *grown = realloc(in_buf, (size_t)n);
            if (grown) { in_buf = grown; in_cap = (size_t)n; }
        }
        if (n > 0 && (size_t)n > in_cap) {
            n = recv(c->fd, probe, sizeof probe, MSG_DONTWAIT | MSG_TRUNC); /* no memory: lost */
        } else if (n > 0) {
            n = recv(c->fd, in_buf, (size_t)n, MSG_DONTWAIT);
            if (n > 0) {
                in_off = 0;
                in_len = (size_t)n;
                flush_stdin();
            }
        }
    }
    if (n > 0) return;
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) drop(c);
        return;
    }
    /* end of this client's stdin; POLLHUP means it closed altogether */
    c->reading = 0;
    if (stdin_once && stdin_fd >= 0 && !stdin_closing) {
        stdin_closing = 1;
        if (in_off == in_len) flush_stdin();
    }
    if (revents & POLLHUP) drop(c);
}

/* The --daemonize launcher, which exits: a NUL byte means ready; anything else is the
 * child's error. Its own function, so its buffer is on the stack of the launcher alone. */
static __attribute__((noinline)) int launcher(int ready, pid_t pid) {
    char buf[8192];
    size_t len = 0;
    while (len < sizeof buf) {
        ssize_t n = read(ready, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
        if (buf[0] == '\0') return 0;
    }
    waitpid(pid, NULL, 0);
    if (len == 0) fprintf(stderr, "crictld-logger: exited before it was ready\n");
    else fwrite(buf, 1, len, stderr);
    return 1;
}

static void write_pidfile(const char *pidfile) { /* no stdio: a FILE would be malloc'd */
    char tmp[strlen(pidfile) + sizeof ".tmp"], text[32];
    snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
    int len = snprintf(text, sizeof text, "%d\n", (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0) {
        int ok = write(fd, text, (size_t)len) == len;
        close(fd);
        if (ok) rename(tmp, pidfile);
        else unlink(tmp);
    }
}

/* The output buffers (see stream_buf): one mapping, its pages touched only by output. */
static void map_buffers(void) {
    size_t stream = MAX_LINE + READ_CHUNK;
    size_t size = 2 * stream + READ_CHUNK + OUT_SIZE + 1 + MSG_PAYLOAD;
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("crictld-logger: mmap: %s", strerror(errno));
    stream_buf[0] = p;
    stream_buf[1] = p + stream;
    chunk = p + 2 * stream;
    out = chunk + READ_CHUNK;
    msg = out + OUT_SIZE;
}

int main(int argc, char **argv) {
    const char *pidfile = NULL, *attach_dir = NULL;
    const char *fifo_path[2] = {NULL, NULL}, *stdin_path = NULL;
    int daemonize = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *opt = argv[i], *val = argv[i + 1];
        if (strcmp(opt, "--log") == 0) log_path = val;
        else if (strcmp(opt, "--pidfile") == 0) pidfile = val;
        else if (strcmp(opt, "--attach") == 0) attach_dir = val;
        else if (strcmp(opt, "--stdout-fifo") == 0) fifo_path[0] = val;
        else if (strcmp(opt, "--stderr-fifo") == 0) fifo_path[1] = val;
        else if (strcmp(opt, "--stdin-fifo") == 0) stdin_path = val;
        else if (strcmp(opt, "--stdin-once") == 0) stdin_once = flag(opt, val);
        else if (strcmp(opt, "--daemonize") == 0) daemonize = flag(opt, val);
    }
    if (!log_path) {
        fprintf(stderr, "usage: crictld-logger --log PATH [--pidfile PATH] [--attach DIR]"
                        " [--stdout-fifo PATH] [--stderr-fifo PATH] [--stdin-fifo PATH]"
                        " [--stdin-once 1|0] [--daemonize 1|0]\n");
        return 2;
    }
    int ready_fd = -1;
    if (daemonize) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) { perror("crictld-logger: pipe"); return 1; }
        pid_t pid = fork();
        if (pid < 0) { perror("crictld-logger: fork"); return 1; }
        if (pid > 0) {
            close(p[1]);
            return launcher(p[0], pid);
        }
        close(p[0]);
        ready_fd = report_fd = p[1];
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            if (null > 2) close(null);
        }
    }
    map_buffers();
    log_fd = open_log();
    if (log_fd < 0) fail("crictld-logger: %s: %s", log_path, strerror(errno));

    int fifo_mode = fifo_path[0] || fifo_path[1];
    struct stream streams[2] = {{3, "stdout", NULL, 0, 2}, {4, "stderr", NULL, 0, 3}};
    int open_streams = 0;
    for (int i = 0; i < 2; i++) {
        if (fifo_mode) streams[i].fd = fifo_path[i] ? open_fifo(fifo_path[i], O_RDONLY) : -1;
        else if (fcntl(streams[i].fd, F_GETFD) < 0) streams[i].fd = -1;
        if (streams[i].fd < 0) continue;
        streams[i].buf = stream_buf[i];
        open_streams++;
    }
    if (stdin_path) stdin_fd = open_fifo(stdin_path, O_RDWR);
    if (attach_dir) open_attach(attach_dir);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN); /* keep draining until the container's output ends */
    signal(SIGPIPE, SIG_IGN);
    if (pidfile) write_pidfile(pidfile);
    if (daemonize) {
        if (write(ready_fd, "", 1) < 0) { /* the launcher died: run on regardless */ }
        close(ready_fd);
        report_fd = -1;
    } else {
        close(5); /* ready */
    }

    while (open_streams > 0) {
        if (reopen_requested) {
            reopen_requested = 0;
            int fd = open_log();
            if (fd >= 0) { close(log_fd); log_fd = fd; }
        }
        /* this round's pollfds: streams, listener, stdin while blocked, then clients */
        nfds_t nfds = 0;
        int sidx[2], stdin_idx = -1;
        for (int i = 0; i < 2; i++) {
            sidx[i] = -1;
            if (streams[i].fd < 0) continue;
            sidx[i] = (int)nfds;
            fds[nfds++] = (struct pollfd){.fd = streams[i].fd, .events = POLLIN};
        }
        if (listen_fd >= 0) fds[nfds++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        int blocked = in_off < in_len;
        if (blocked) {
            stdin_idx = (int)nfds;
            fds[nfds++] = (struct pollfd){.fd = stdin_fd, .events = POLLOUT};
        }
        for (int i = 0; i < nclients; i++) {
            struct client *c = &clients[i];
            c->pidx = -1;
            if (c->reading && blocked) continue; /* their input waits in their socket */
            c->pidx = (int)nfds;
            /* events 0 once stdin ended: POLLHUP (closed) is still reported */
            fds[nfds++] = (struct pollfd){.fd = c->fd, .events = c->reading ? POLLIN : 0};
        }
        int r = poll(fds, nfds, 1000);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (r == 0) continue;
        /* before reading output: a client whose connect() returned before some output was
         * written gets that output */
        if (listen_fd >= 0) accept_clients();
        for (int i = 0; i < 2; i++) {
            if (sidx[i] < 0 || !(fds[sidx[i]].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            struct stream *s = &streams[i];
            size_t room = MAX_LINE + READ_CHUNK - s->len; /* drain() leaves < MAX_LINE */
            ssize_t n = read(s->fd, chunk, room < READ_CHUNK ? room : READ_CHUNK);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n > 0) {
                memcpy(s->buf + s->len, chunk, (size_t)n);
                s->len += (size_t)n;
                drain(s, 0);
                broadcast(s->type, chunk, (size_t)n);
            } else {
                drain(s, 1);
                close(s->fd);
                s->fd = -1;
                open_streams--;
            }
        }
        if (stdin_idx >= 0 && fds[stdin_idx].revents) flush_stdin();
        for (int i = 0; i < nclients; i++) {
            struct client *c = &clients[i];
            if (c->fd < 0 || c->pidx < 0 || !fds[c->pidx].revents) continue;
            if (!c->reading) drop(c); /* hung up (or failed) */
            else if (in_off == in_len) read_client(c, fds[c->pidx].revents);
        }
        int kept = 0;
        for (int i = 0; i < nclients; i++)
            if (clients[i].fd >= 0) clients[kept++] = clients[i];
        nclients = kept;
    }
    /* the container exited: gone from the filesystem first, then every client sees EOF */
    if (listen_fd >= 0) {
        close(listen_fd);
        unlinkat(attach_dir_fd, "attach", 0);
    }
    if (pidfile) unlink(pidfile);
    for (int i = 0; i < nclients; i++) close(clients[i].fd);
    return 0;
}
