/*
 * The kernel floor of a socket takeover: how long SCM_RIGHTS takes to move N connected TCP
 * sockets from one process to another, with nothing else in the way (no protocol, no event
 * loop, no wrapping). The benchmark divides the engine's transfer time (phases.transferMs: first
 * batch sent to PREPARE) by this figure.
 *
 * Usage: floor N ROUNDS
 * Prints one JSON object on stdout; exits 3 when N sockets do not fit under RLIMIT_NOFILE.
 *
 * Three processes, so that no one of them holds more than N + a few fds (RLIMIT_NOFILE is per
 * process): the peer opens N connections to the sender's listener, the sender accepts them and
 * passes its N ends to the receiver, the way a server hands its connections to a successor.
 * Batches and window match the engine (src/protocol.ts MAX_FDS_PER_FRAME, src/predecessor.ts
 * batchWindow()) so the ratio compares the same transfer pattern.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FDS_PER_BATCH 253
/* Listener, channel, pipe ends and stdio, with room to spare. */
#define SPARE_FDS 16

/* The engine's window: half of RLIMIT_NOFILE in fds in flight (ETOOMANYREFS), 4 to 64 batches. */
static int batch_window(void) {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 4;
  long window = (long)(limit.rlim_cur / 2 / FDS_PER_BATCH);
  return window < 4 ? 4 : window > 64 ? 64 : (int)window;
}

static void die(const char *what) {
  printf("{\"error\":\"%s: %s\"}\n", what, strerror(errno));
  exit(1);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void send_byte(int fd) {
  char b = 0;
  if (send(fd, &b, 1, 0) != 1) die("send");
}

static void recv_byte(int fd) {
  char b;
  if (recv(fd, &b, 1, 0) != 1) die("recv");
}

static void send_batch(int channel, const int *fds, int count) {
  char cmsgbuf[CMSG_SPACE(sizeof(int) * FDS_PER_BATCH)];
  uint32_t header = (uint32_t)count;
  struct iovec iov = {.iov_base = &header, .iov_len = sizeof header};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsgbuf,
                       .msg_controllen = CMSG_SPACE(sizeof(int) * count)};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * count);
  memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * count);
  if (sendmsg(channel, &msg, 0) < 0) die("sendmsg");
}

/* Returns the number of fds received into `into`; a truncated batch is an error, not a loss. */
static int recv_batch(int channel, int *into) {
  char cmsgbuf[CMSG_SPACE(sizeof(int) * FDS_PER_BATCH)];
  uint32_t header;
  struct iovec iov = {.iov_base = &header, .iov_len = sizeof header};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsgbuf, .msg_controllen = sizeof cmsgbuf};
  ssize_t n = recvmsg(channel, &msg, MSG_CMSG_CLOEXEC);
  if (n == 0) return -1;
  if (n < 0) die("recvmsg");
  if (msg.msg_flags & MSG_CTRUNC) {
    errno = EMFILE;
    die("recvmsg truncated the fds");
  }
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  if (cmsg == NULL || cmsg->cmsg_type != SCM_RIGHTS) {
    errno = EPROTO;
    die("batch without fds");
  }
  int count = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
  memcpy(into, CMSG_DATA(cmsg), sizeof(int) * count);
  return count;
}

static void receiver(int channel, int n) {
  int *fds = malloc(sizeof(int) * n);
  if (fds == NULL) die("malloc");
  /* A process's fd table grows by doubling as fds arrive; growing it once up front is what a
     real successor does before a big receive, so the floor does it too. */
  struct rlimit lim;
  getrlimit(RLIMIT_NOFILE, &lim);
  int high = n + SPARE_FDS < (int)lim.rlim_cur ? n + SPARE_FDS : (int)lim.rlim_cur - 1;
  if (dup2(channel, high) < 0) die("dup2");
  close(high);
  send_byte(channel);
  for (;;) {
    int got = 0;
    while (got < n) {
      int count = recv_batch(channel, fds + got);
      if (count < 0) exit(0);
      got += count;
      send_byte(channel);
    }
    /* Closing only drops this process's reference: the sender still holds every socket. */
    for (int i = 0; i < n; i++) close(fds[i]);
    send_byte(channel);
  }
}

static void peer(struct sockaddr_in *addr, int n, int control) {
  int *fds = malloc(sizeof(int) * n);
  if (fds == NULL) die("malloc");
  for (int i = 0; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[i] < 0) die("socket");
    if (connect(fds[i], (struct sockaddr *)addr, sizeof *addr) < 0) die("connect");
  }
  char b;
  /* Hold the connections open until the sender is done: EOF on the pipe. */
  while (read(control, &b, 1) > 0) {
  }
  exit(0);
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s N ROUNDS\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]);
  int rounds = atoi(argv[2]);
  if (n <= 0 || rounds <= 0) {
    fprintf(stderr, "N and ROUNDS must be positive\n");
    return 2;
  }
  struct rlimit lim;
  getrlimit(RLIMIT_NOFILE, &lim);
  if ((rlim_t)n + SPARE_FDS > lim.rlim_cur) {
    printf("{\"error\":\"%d sockets need %d fds in one process; RLIMIT_NOFILE is %llu (hard %llu)\","
           "\"rlimitNofile\":%llu}\n",
           n, n + SPARE_FDS, (unsigned long long)lim.rlim_cur, (unsigned long long)lim.rlim_max,
           (unsigned long long)lim.rlim_cur);
    return 3;
  }

  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(listener, 4096) < 0) die("listen");
  if (getsockname(listener, (struct sockaddr *)&addr, &len) < 0) die("getsockname");

  int channel[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, channel) < 0) die("socketpair");
  int control[2];
  if (pipe2(control, O_CLOEXEC) < 0) die("pipe2");

  pid_t receiver_pid = fork();
  if (receiver_pid < 0) die("fork");
  if (receiver_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(listener);
    close(control[0]);
    close(control[1]);
    close(channel[0]);
    receiver(channel[1], n);
  }
  close(channel[1]);

  pid_t peer_pid = fork();
  if (peer_pid < 0) die("fork");
  if (peer_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(listener);
    close(channel[0]);
    close(control[1]);
    peer(&addr, n, control[0]);
  }
  close(control[0]);

  int *fds = malloc(sizeof(int) * n);
  if (fds == NULL) die("malloc");
  double accept_start = now_ms();
  for (int i = 0; i < n; i++) {
    fds[i] = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (fds[i] < 0) die("accept4");
  }
  double setup_ms = now_ms() - accept_start;

  int batches = (n + FDS_PER_BATCH - 1) / FDS_PER_BATCH;
  int window = batch_window();
  double *samples = malloc(sizeof(double) * rounds);
  if (samples == NULL) die("malloc");
  for (int r = 0; r < rounds; r++) {
    recv_byte(channel[0]); /* the receiver is ready: table grown, previous round closed */
    double start = now_ms();
    int sent = 0, acked = 0;
    while (acked < batches) {
      if (sent < batches && sent - acked < window) {
        int first = sent * FDS_PER_BATCH;
        int count = n - first < FDS_PER_BATCH ? n - first : FDS_PER_BATCH;
        send_batch(channel[0], fds + first, count);
        sent++;
      } else {
        recv_byte(channel[0]);
        acked++;
      }
    }
    samples[r] = now_ms() - start;
  }
  recv_byte(channel[0]); /* the last round is closed: the receiver can be told to go */
  close(channel[0]);
  close(control[1]);
  waitpid(receiver_pid, NULL, 0);
  waitpid(peer_pid, NULL, 0);

  printf("{\"connections\":%d,\"batches\":%d,\"fdsPerBatch\":%d,\"window\":%d,\"setupMs\":%.3f,\"transferMs\":[",
         n, batches, FDS_PER_BATCH, window, setup_ms);
  for (int r = 0; r < rounds; r++) printf("%s%.3f", r ? "," : "", samples[r]);
  qsort(samples, rounds, sizeof(double), compare);
  printf("],\"medianMs\":%.3f,\"minMs\":%.3f}\n", samples[rounds / 2], samples[0]);
  return 0;
}
