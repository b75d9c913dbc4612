/* nbd-randio: random or sequential I/O against an NBD URI with libnbd's
 * asynchronous API, QD requests in flight. Unlike fio's nbd engine it allows
 * the local files a TLS URI names (tls-psk-file, tls-certificates), so it can
 * drive TLS servers.
 *
 *   nbd-randio URI read|write|randread|randwrite BS QD SECONDS
 *
 * Prints one JSON line: {"iops":..., "mibs":..., "lat_mean_us":..., "lat_p99_us":...}
 */
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXQD 256

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct slot {
  char *buf;
  double start;
  int64_t cookie;
};

static uint64_t rng = 88172645463325252ull;
static uint64_t xorshift(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s URI read|write|randread|randwrite BS QD SECONDS\n", argv[0]);
    return 2;
  }
  const char *uri = argv[1], *mode = argv[2];
  size_t bs = strtoull(argv[3], NULL, 10);
  int qd = atoi(argv[4]);
  double secs = atof(argv[5]);
  int is_write = strstr(mode, "write") != NULL, is_rand = strncmp(mode, "rand", 4) == 0;
  if (qd < 1 || qd > MAXQD) qd = MAXQD;

  struct nbd_handle *h = nbd_create();
  if (!h || nbd_set_uri_allow_local_file(h, true) == -1 || nbd_connect_uri(h, uri) == -1) {
    fprintf(stderr, "%s\n", nbd_get_error());
    return 1;
  }
  int64_t size = nbd_get_size(h);
  uint64_t blocks = size / bs, seq = 0;
  struct slot slots[MAXQD];
  size_t cap = 1 << 20, nlat = 0;
  double *lat = malloc(cap * sizeof *lat);
  for (int i = 0; i < qd; i++) {
    slots[i].buf = aligned_alloc(4096, (bs + 4095) / 4096 * 4096);
    memset(slots[i].buf, 0xa5, bs);
    slots[i].cookie = -1;
  }
  double t0 = now(), end = t0 + secs;
  uint64_t done = 0;
  for (;;) {
    double t = now();
    for (int i = 0; i < qd; i++) {
      if (slots[i].cookie >= 0) {
        int r = nbd_aio_command_completed(h, slots[i].cookie);
        if (r == -1) {
          fprintf(stderr, "I/O failed: %s\n", nbd_get_error());
          return 1;
        }
        if (r == 0) continue;
        if (nlat == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
        lat[nlat++] = t - slots[i].start;
        done++;
        slots[i].cookie = -1;
      }
      if (t >= end) continue;
      uint64_t blk = is_rand ? xorshift() % blocks : (seq++ % blocks);
      slots[i].start = t;
      slots[i].cookie = is_write ? nbd_aio_pwrite(h, slots[i].buf, bs, blk * bs, NBD_NULL_COMPLETION, 0)
                                 : nbd_aio_pread(h, slots[i].buf, bs, blk * bs, NBD_NULL_COMPLETION, 0);
      if (slots[i].cookie == -1) {
        fprintf(stderr, "%s\n", nbd_get_error());
        return 1;
      }
    }
    int inflight = nbd_aio_in_flight(h);
    if (t >= end && inflight == 0) break;
    if (nbd_poll(h, -1) == -1) {
      fprintf(stderr, "%s\n", nbd_get_error());
      return 1;
    }
  }
  double elapsed = now() - t0;
  qsort(lat, nlat, sizeof *lat, cmp_double);
  double sum = 0;
  for (size_t i = 0; i < nlat; i++) sum += lat[i];
  printf("{\"iops\": %.0f, \"mibs\": %.1f, \"lat_mean_us\": %.1f, \"lat_p99_us\": %.0f, \"ios\": %" PRIu64 "}\n",
         done / elapsed, done * (double)bs / elapsed / 1048576, nlat ? sum / nlat * 1e6 : 0,
         nlat ? lat[(size_t)(nlat * 0.99)] * 1e6 : 0, done);
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}
