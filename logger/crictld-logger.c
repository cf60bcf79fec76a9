/*
 * crictld-logger: the container log writer, started by containerd's shim (a binary:// log
 * URI), not by crictld, so it keeps writing while crictld is down or restarting.
 *
 * The shim hands it the container's stdout on fd 3 and stderr on fd 4 and waits for fd 5 to
 * be closed as the "ready" signal. Each line goes to the CRI log file as
 *
 *     <RFC3339Nano time> <stdout|stderr> <F|P> <content>\n
 *
 * where P marks a partial line: a line longer than 16 KiB is cut into P chunks ended by an F
 * chunk, and output that ends without a newline is written with P. SIGUSR1 reopens the log
 * path (kubelet renamed the file and called ReopenContainerLog).
 *
 * Usage: crictld-logger --log PATH [--pidfile PATH]   (any order)
 *
 * Written in C because one runs per container: a Python interpreter each cost ~5 MB and
 * ~50 ms of StartContainer at 300 containers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16 * 1024)
#define READ_CHUNK 65536

static volatile sig_atomic_t reopen_requested;
static const char *log_path;
static int log_fd = -1;

struct stream {
    int fd;
    const char *name;
    char *buf;
    size_t len;
};

static void on_usr1(int sig) { (void)sig; reopen_requested = 1; }

static int open_log(void) {
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        /* the directory may not exist yet */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", log_path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            for (char *p = dir + 1; *p; p++)
                if (*p == '/') { *p = '\0'; mkdir(dir, 0755); *p = '/'; }
            mkdir(dir, 0755);
        }
        fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    }
    return fd;
}

static void write_all(const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = write(log_fd, data, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return; /* nowhere to report it; keep draining the container's output */
        }
        data += w;
        n -= (size_t)w;
    }
}

static void record(const struct stream *s, char tag, const char *content, size_t n) {
    struct timespec ts;
    struct tm tm;
    char head[64];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
    k += (size_t)snprintf(head + k, sizeof head - k, ".%09ldZ %s %c ", ts.tv_nsec, s->name, tag);
    /* one write per record: readers never see half of one */
    char *out = malloc(k + n + 1);
    if (!out) return;
    memcpy(out, head, k);
    memcpy(out + k, content, n);
    out[k + n] = '\n';
    write_all(out, k + n + 1);
    free(out);
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

int main(int argc, char **argv) {
    const char *pidfile = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--log") == 0) log_path = argv[i + 1];
        else if (strcmp(argv[i], "--pidfile") == 0) pidfile = argv[i + 1];
    }
    if (!log_path) {
        fprintf(stderr, "usage: crictld-logger --log PATH [--pidfile PATH]\n");
        return 2;
    }
    log_fd = open_log();
    if (log_fd < 0) {
        perror(log_path);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN); /* keep draining until the container's output ends */
    signal(SIGPIPE, SIG_IGN);
    if (pidfile) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%d\n", getpid());
            fclose(f);
            rename(tmp, pidfile);
        }
    }
    close(5); /* ready */

    struct stream streams[2] = {{3, "stdout", NULL, 0}, {4, "stderr", NULL, 0}};
    struct pollfd fds[2];
    int open_streams = 0;
    for (int i = 0; i < 2; i++) {
        streams[i].buf = malloc(MAX_LINE + READ_CHUNK);
        if (fcntl(streams[i].fd, F_GETFD) < 0) { fds[i].fd = -1; continue; }
        fds[i].fd = streams[i].fd;
        fds[i].events = POLLIN;
        open_streams++;
    }
    char chunk[READ_CHUNK];
    while (open_streams > 0) {
        if (reopen_requested) {
            reopen_requested = 0;
            int fd = open_log();
            if (fd >= 0) { close(log_fd); log_fd = fd; }
        }
        int r = poll(fds, 2, 1000);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            struct stream *s = &streams[i];
            size_t room = MAX_LINE + READ_CHUNK - s->len; /* drain() leaves < MAX_LINE */
            ssize_t n = read(s->fd, chunk, room < sizeof chunk ? room : sizeof chunk);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n > 0) {
                memcpy(s->buf + s->len, chunk, (size_t)n);
                s->len += (size_t)n;
                drain(s, 0);
            } else {
                drain(s, 1);
                close(s->fd);
                fds[i].fd = -1;
                open_streams--;
            }
        }
    }
    if (pidfile) unlink(pidfile);
    return 0;
}
