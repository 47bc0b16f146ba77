/*
 * wakeup.c — a MEASURING TOOL (docs/bench/ceiling.md): what one sleeping-thread wake-up costs on this
 * machine. Two processes ping-pong a 64-byte UDP datagram over loopback N times; each waits in a blocking
 * poll() (as the relays do) or spins on a non-blocking recv (--spin). Optional CPU pinning of the two
 * (--cpus A,B). Prints the mean round trip in µs: one round trip = two wake-ups when blocking.
 *   wakeup [--n N] [--spin] [--cpus A,B]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int spin = 0;

static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  if (sched_setaffinity(0, sizeof(s), &s) < 0) perror("sched_setaffinity");
}

static int sock(int port, int peer) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("bind"); exit(1); }
  a.sin_port = htons(peer);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); exit(1); }
  return fd;
}

static void rx(int fd, char *b) {
  for (;;) {
    if (recv(fd, b, 64, 0) == 64) return;
    if (errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) { perror("recv"); exit(1); }
    if (!spin) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      poll(&p, 1, -1);
    }
  }
}

int main(int argc, char **argv) {
  int n = 20000, ca = -1, cb = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--spin")) spin = 1;
    else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--cpus") && i + 1 < argc && sscanf(argv[++i], "%d,%d", &ca, &cb) == 2) {}
    else { fprintf(stderr, "usage: wakeup [--n N] [--spin] [--cpus A,B]\n"); return 2; }
  }
  int a = sock(47001, 47002), b = sock(47002, 47001);
  char buf[64] = {0};
  pid_t pid = fork();
  if (pid == 0) { /* echo side */
    pin(cb);
    for (int i = 0; i < n + 100; i++) { rx(b, buf); if (send(b, buf, 64, 0) != 64) perror("send"); }
    _exit(0);
  }
  pin(ca);
  struct timespec t0, t1;
  for (int i = 0; i < n + 100; i++) {
    if (i == 100) clock_gettime(CLOCK_MONOTONIC, &t0); /* 100 warm-up round trips */
    if (send(a, buf, 64, 0) != 64) perror("send");
    rx(a, buf);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  waitpid(pid, NULL, 0);
  double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / n;
  printf("{\"mode\":\"%s\",\"cpus\":\"%d,%d\",\"n\":%d,\"rttUs\":%.2f}\n", spin ? "spin" : "poll", ca, cb, n, us);
  return 0;
}
