// The ceiling of P3's pattern for a FUSE server with no Python in it (benchmarks/native_ceiling.py).
//
// A read-only mirror of one flat directory, written from include/uapi/linux/fuse.h like the kernel
// binding: LOOKUP (fstatat on the directory), GETATTR, OPEN answered FOPEN_PASSTHROUGH on the file
// itself (one backing id per inode, registered at its first open and closed when the kernel forgets
// the inode, as encordfs does), RELEASE, FORGET and BATCH_FORGET; everything else ENOSYS. Each worker
// thread reads its own clone of the session fd. With OPEN_US=N in the environment, every OPEN first
// spins N microseconds under one process-wide mutex: the cost of an open served by a Python core
// behind its GIL, to see what a native loop around a Python open would reach.
//
// Usage: native_ceiling DIR MOUNTPOINT THREADS   (as root; unmount with umount -l)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { LOOKUP = 1, FORGET = 2, GETATTR = 3, OPEN = 14, RELEASE = 18, FLUSH = 25, INIT = 26, DESTROY = 38,
       BATCH_FORGET = 42 };
#define BACKING_OPEN 0x4010E501u
#define BACKING_CLOSE 0x4004E502u
#define DEV_CLONE 0x8004E500u
#define SLOTS (1u << 22) /* inode table: st_ino modulo this (the data dir holds far fewer files) */

struct in_hdr { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid; uint16_t extlen, pad; };
struct out_hdr { uint32_t len; int32_t error; uint64_t unique; };
struct attr {
  uint64_t ino, size, blocks; int64_t atime, mtime, ctime;
  uint32_t atimens, mtimens, ctimens, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct entry_out { uint64_t nodeid, generation, entry_valid, attr_valid; uint32_t entry_ns, attr_ns; struct attr attr; };
struct attr_out { uint64_t attr_valid; uint32_t attr_ns, dummy; struct attr attr; };
struct open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
struct init_out {
  uint32_t major, minor, max_readahead, flags; uint16_t max_background, congestion_threshold;
  uint32_t max_write, time_gran; uint16_t max_pages, map_alignment; uint32_t flags2, max_stack_depth;
  uint16_t request_timeout, unused[11];
};
struct backing_map { int32_t fd; uint32_t flags; uint64_t padding; };

static int data_dir, session_fd;
static char **names;     // slot -> name in data_dir
static int32_t *backing; // slot -> backing id (0: none)
static pthread_mutex_t state = PTHREAD_MUTEX_INITIALIZER, python = PTHREAD_MUTEX_INITIALIZER;
static long open_us;

static void fill(struct attr *a, const struct stat *st, uint64_t ino) {
  memset(a, 0, sizeof *a);
  a->ino = ino; a->size = st->st_size; a->blocks = st->st_blocks; a->atime = st->st_atime;
  a->mtime = st->st_mtime; a->ctime = st->st_ctime; a->mode = st->st_mode; a->nlink = st->st_nlink; a->blksize = 4096;
}

static void reply(int fd, uint64_t unique, int error, const void *body, size_t n) {
  struct out_hdr h = { (uint32_t)(sizeof h + (error ? 0 : n)), -error, unique };
  struct iovec iov[2] = { { &h, sizeof h }, { (void *)body, error ? 0 : n } };
  if (writev(fd, iov, 2) < 0 && errno != ENOENT) perror("writev");
}

static void spin_as_python(void) {
  struct timespec t0, t;
  pthread_mutex_lock(&python);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < open_us);
  pthread_mutex_unlock(&python);
}

static void forget(uint64_t nodeid) {
  uint32_t slot = nodeid % SLOTS;
  pthread_mutex_lock(&state);
  if (backing[slot]) {
    uint32_t id = (uint32_t)backing[slot];
    ioctl(session_fd, BACKING_CLOSE, &id);
    backing[slot] = 0;
  }
  pthread_mutex_unlock(&state);
}

static void *worker(void *arg) {
  int fd = (int)(intptr_t)arg;
  size_t size = (1u << 20) + 4096;
  char *buf = malloc(size);
  for (;;) {
    ssize_t n = read(fd, buf, size);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      if (errno != ENODEV) perror("read");
      return NULL;
    }
    struct in_hdr *h = (struct in_hdr *)buf;
    char *in = buf + sizeof *h;
    uint32_t slot = h->nodeid % SLOTS;
    switch (h->opcode) {
    case INIT: {
      uint32_t *init_in = (uint32_t *)in; // major minor max_readahead flags flags2
      uint64_t offered = init_in[3] | ((uint64_t)init_in[4] << 32);
      uint64_t wanted = (1ull << 0) | (1ull << 18) | (1ull << 22) | (1ull << 30) | (1ull << 37);
      uint64_t flags = offered & wanted; // ASYNC_READ PARALLEL_DIROPS MAX_PAGES INIT_EXT PASSTHROUGH
      struct init_out o = { 7, init_in[1] < 40 ? init_in[1] : 40, init_in[2], (uint32_t)flags, 64, 48, 1u << 20, 1,
                            256, 0, (uint32_t)(flags >> 32), 1, 0, { 0 } };
      if (!(flags & (1ull << 37))) fprintf(stderr, "native_ceiling: the kernel offers no passthrough\n");
      reply(fd, h->unique, 0, &o, sizeof o);
      break;
    }
    case LOOKUP: {
      struct stat st;
      if (fstatat(data_dir, in, &st, AT_SYMLINK_NOFOLLOW)) { reply(fd, h->unique, errno, NULL, 0); break; }
      uint64_t ino = (uint64_t)st.st_ino + 1; // (1 is the root)
      uint32_t s = ino % SLOTS;
      pthread_mutex_lock(&state);
      if (!names[s]) names[s] = strdup(in);
      pthread_mutex_unlock(&state);
      struct entry_out e = { ino, 0, 3600, 3600, 0, 0, { 0 } };
      fill(&e.attr, &st, ino);
      reply(fd, h->unique, 0, &e, sizeof e);
      break;
    }
    case GETATTR: {
      struct stat st;
      int failed = h->nodeid == 1 ? fstat(data_dir, &st) : fstatat(data_dir, names[slot], &st, AT_SYMLINK_NOFOLLOW);
      if (failed) { reply(fd, h->unique, errno, NULL, 0); break; }
      struct attr_out a = { 3600, 0, 0, { 0 } };
      fill(&a.attr, &st, h->nodeid);
      reply(fd, h->unique, 0, &a, sizeof a);
      break;
    }
    case OPEN: {
      if (open_us) spin_as_python();
      pthread_mutex_lock(&state);
      int32_t id = backing[slot];
      if (!id) {
        int file = openat(data_dir, names[slot], O_RDONLY | O_CLOEXEC);
        if (file < 0) { int e = errno; pthread_mutex_unlock(&state); reply(fd, h->unique, e, NULL, 0); break; }
        struct backing_map map = { file, 0, 0 };
        id = ioctl(session_fd, BACKING_OPEN, &map);
        close(file);
        if (id <= 0) { perror("BACKING_OPEN"); pthread_mutex_unlock(&state); reply(fd, h->unique, EIO, NULL, 0); break; }
        backing[slot] = id;
      }
      pthread_mutex_unlock(&state);
      struct open_out o = { 0, (1u << 7) | (1u << 5), id }; // FOPEN_PASSTHROUGH | FOPEN_NOFLUSH
      reply(fd, h->unique, 0, &o, sizeof o);
      break;
    }
    case FORGET: forget(h->nodeid); break;
    case BATCH_FORGET: {
      uint32_t count = *(uint32_t *)in;
      uint64_t *one = (uint64_t *)(in + 8); // {nodeid, nlookup} pairs
      for (uint32_t i = 0; i < count; i++) forget(one[2 * i]);
      break;
    }
    case RELEASE: case FLUSH: reply(fd, h->unique, 0, NULL, 0); break;
    case DESTROY: break;
    default: reply(fd, h->unique, ENOSYS, NULL, 0);
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: native_ceiling DIR MOUNTPOINT THREADS\n"); return 2; }
  open_us = getenv("OPEN_US") ? atol(getenv("OPEN_US")) : 0;
  names = calloc(SLOTS, sizeof *names);
  backing = calloc(SLOTS, sizeof *backing);
  data_dir = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  session_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (data_dir < 0 || session_fd < 0) { perror("open"); return 1; }
  char options[128];
  snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other", session_fd);
  if (mount("native_ceiling", argv[2], "fuse.native_ceiling", MS_NOSUID | MS_NODEV | MS_RDONLY, options)) {
    perror("mount");
    return 1;
  }
  int threads = atoi(argv[3]);
  if (threads < 1 || threads > 64) threads = 1;
  pthread_t t[64];
  for (int i = 0; i < threads; i++) {
    int fd = session_fd;
    if (i) {
      uint32_t source = (uint32_t)session_fd;
      fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
      if (fd < 0 || ioctl(fd, DEV_CLONE, &source)) { perror("clone"); return 1; }
    }
    pthread_create(&t[i], NULL, worker, (void *)(intptr_t)fd);
  }
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  return 0;
}
