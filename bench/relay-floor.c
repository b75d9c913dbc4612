/* bench/relay-floor.c: the CPU floor of relaying 1 MiB writes from an NBD
 * client's Unix socket to an NFS server's loopback TCP socket.
 *
 * A source process writes 1 MiB messages into a Unix socket (as fio's nbd
 * engine sends WRITE payloads); the relay reads each and sends it into a
 * loopback TCP connection; a sink process reads and discards (as ganesha
 * reads its RPC records). The relay does nothing else: no protocol, no
 * parsing, no coroutines. Its CPU per MiB (getrusage: user + system, which
 * includes the loopback TCP delivery the kernel runs on the sender's time)
 * is the least any user-space NBD-to-NFS server can spend per 1 MiB write
 * on this machine. Modes:
 *   copy         read() + send(): what strata and qemu-nbd do
 *   copy+retain  the same + memcpy into a 256 MiB ring (strata's retention
 *                of unstable writes until COMMIT, as it was)
 *   copy+stream  the same with streaming (non-temporal) stores, as strata
 *                copies large writes into its log now
 *   splice       Unix socket -> pipe -> TCP socket, no copy in user space
 *   splice+tee   the same + tee() into a second pipe (a zero-copy way to
 *                retain the data), drained at once
 *
 *   cc -O2 -o relay-floor bench/relay-floor.c && ./relay-floor MODE [MiB]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <emmintrin.h>

#define MIB (1 << 20)
#define WARMUP 64

static void die(const char* what) {
  perror(what);
  exit(1);
}

static void stream_copy(char* d, const char* s, size_t n) {
  for (size_t i = 0; i < n; i += 64)
    for (size_t k = 0; k < 64; k += 16)
      _mm_stream_si128((__m128i*)(d + i + k), _mm_loadu_si128((const __m128i*)(s + i + k)));
  _mm_sfence();
}

static double cpu_seconds(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (double)r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + (double)r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void read_full(int fd, char* b, size_t n) {
  while (n) {
    ssize_t r = read(fd, b, n);
    if (r <= 0) die("read");
    b += r;
    n -= (size_t)r;
  }
}

static void send_full(int fd, const char* b, size_t n) {
  while (n) {
    ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
    if (r <= 0) die("send");
    b += r;
    n -= (size_t)r;
  }
}

static void splice_full(int in, int out, size_t n, unsigned flags) {
  while (n) {
    ssize_t r = splice(in, NULL, out, NULL, n, flags);
    if (r <= 0) die("splice");
    n -= (size_t)r;
  }
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "copy";
  long count = argc > 2 ? atol(argv[2]) : 4096;
  int copy = !strncmp(mode, "copy", 4), stream = !strcmp(mode, "copy+stream");
  int retain = stream || !strcmp(mode, "copy+retain"), tee_it = !strcmp(mode, "splice+tee");
  if (!copy && strcmp(mode, "splice") && !tee_it) {
    fprintf(stderr, "usage: %s copy|copy+retain|copy+stream|splice|splice+tee [MiB]\n", argv[0]);
    return 2;
  }
  int us[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, us)) die("socketpair");
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(ls, (struct sockaddr*)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (struct sockaddr*)&a, &al))
    die("listen");
  if (fork() == 0) { /* sink */
    int c = accept(ls, NULL, NULL);
    char* b = malloc(MIB);
    for (;;)
      if (read(c, b, MIB) <= 0) _exit(0);
  }
  if (fork() == 0) { /* source */
    close(us[1]);
    char* b = malloc(MIB);
    memset(b, 7, MIB);
    for (long i = 0; i < count + WARMUP; ++i) send_full(us[0], b, MIB);
    _exit(0);
  }
  close(us[0]);
  close(ls);
  int t = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(t, (struct sockaddr*)&a, sizeof a)) die("connect");
  char* buf = aligned_alloc(4096, MIB);
  size_t keep = 256ul * MIB;
  char* ring = retain ? aligned_alloc(4096, keep) : NULL;
  if (ring) memset(ring, 0, keep);
  int p[2], q[2];
  if (pipe(p) || pipe(q)) die("pipe");
  fcntl(p[0], F_SETPIPE_SZ, MIB);
  fcntl(q[0], F_SETPIPE_SZ, MIB);
  int null = open("/dev/null", O_WRONLY);
  if (null < 0) die("/dev/null");
  double c0 = 0;
  struct timespec w0 = {0}, w1;
  for (long i = 0; i < count + WARMUP; ++i) {
    if (i == WARMUP) {
      c0 = cpu_seconds();
      clock_gettime(CLOCK_MONOTONIC, &w0);
    }
    if (copy) {
      read_full(us[1], buf, MIB);
      send_full(t, buf, MIB);
      if (retain) {
        char* keep_at = ring + (size_t)(i % 256) * MIB;
        if (stream)
          stream_copy(keep_at, buf, MIB);
        else
          memcpy(keep_at, buf, MIB);
      }
      continue;
    }
    for (size_t left = MIB; left;) {
      ssize_t n = splice(us[1], NULL, p[1], NULL, left, SPLICE_F_MOVE);
      if (n <= 0) die("splice in");
      if (tee_it) {
        if (tee(p[0], q[1], (size_t)n, 0) != n) die("tee");
        splice_full(q[0], null, (size_t)n, 0);
      }
      splice_full(p[0], t, (size_t)n, SPLICE_F_MOVE | SPLICE_F_MORE);
      left -= (size_t)n;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &w1);
  double c = cpu_seconds() - c0;
  double w = (double)(w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) / 1e9;
  printf("| %s | %ld | %.3f | %.0f |\n", mode, count, c * 1e3 / (double)count, (double)count / w);
  close(t);
  close(us[1]);
  while (wait(NULL) > 0) {
  }
  return 0;
}
