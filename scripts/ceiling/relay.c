/*
 * relay.c — a MEASURING TOOL, not product code: the smallest userspace TUN<->UDP relay with the same
 * I/O design as netmanager's FAST/JUMBO path, to find what any userspace relay can reach on a machine
 * (docs/bench/ceiling.md). Single-threaded, blocking poll() on both fds, no busy spinning.
 *
 *   relay --tun NAME --mtu MTU --local IP --peer IP [--port P] [--node N] [--aead] [--spin]
 *
 * (--spin: a diagnostic only, poll() with timeout 0 so the thread never sleeps; it shows what the
 * wake-ups cost. The reference model, as netmanager's default, is the blocking poll.)
 *
 * TUN: IFF_TUN|IFF_NO_PI|IFF_VNET_HDR with TUNSETOFFLOAD CSUM|TSO4|TSO6, so a read returns a
 * virtio_net_hdr + a (super-)packet of up to 64 KB. Each read goes by readv straight into a wire
 * layout of datagrams of DS = 8 + MTU bytes: an 8-byte chunk header (type, index, count, sender node,
 * message id) and MTU bytes of the stream "virtio_net_hdr + packet [+ 16-byte GCM tag]". A message of
 * several chunks leaves in one sendmmsg entry with UDP_SEGMENT = DS (one GSO send; split only when it
 * has more than 65507 / DS datagrams); the reads of one wake-up (until EAGAIN, at most BATCH) leave in
 * one sendmmsg. Receive: recvmmsg with UDP_GRO into 64 KB buffers; a message that lies whole in one
 * buffer is written to the TUN with one writev whose iovecs skip the chunk headers; one cut by a
 * buffer's end (or reordered) is copied into one reassembly buffer. --aead: AES-256-GCM (libcrypto
 * EVP), one AEAD per message, EVP update per chunk in place in the wire layout, the tag at the end of
 * the stream (in the last datagram); the receiver verifies before writing. The key is a fixed
 * throw-away constant and the nonce is (sender node, message id): fine for a benchmark between two
 * namespaces, NOT a secure protocol.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define HDR 8           /* chunk header: type, index, count, node, id (big-endian u32) */
#define MAXCH 64        /* chunks per message at most */
#define BATCH 32        /* TUN reads per wake-up / datagram buffers per recvmmsg */
#define RXBUF 65536     /* one GRO receive buffer */
#define TAG 16
#define VNET 10         /* sizeof(struct virtio_net_hdr) */
#define T_DATA 1

static int tunfd = -1, udpfd = -1, aead = 0, spin = 0, node = 1;
static size_t mtu = 1450, ds; /* ds = HDR + mtu: every datagram but a message's last */
static size_t gso_max;        /* datagrams per UDP_SEGMENT send */
static volatile sig_atomic_t stop = 0;
static uint8_t *txbuf, *rxbuf, *rabuf;
static struct iovec txiov[BATCH][MAXCH];
static EVP_CIPHER_CTX *ectx, *dctx;
static uint32_t next_id = 0;
static unsigned long long st_tx_msgs, st_tx_dgrams, st_rx_msgs, st_rx_dgrams, st_rx_bad, st_rx_auth,
    st_rx_copied, st_tun_err, st_tx_err;
static const uint8_t key[32] = "ceiling-relay-throwaway-key-0001"; /* 32 bytes, benchmark only */

/* Reassembly of one message cut by a receive buffer's end. */
static struct {
  uint32_t id;
  uint8_t node, cnt, have[MAXCH];
  unsigned got;
  size_t total; /* stream bytes, known once the last chunk came */
  int active;
} ra;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

static void nonce_of(uint8_t iv[12], uint8_t from, uint32_t id) {
  memset(iv, 0, 12);
  iv[0] = from;
  iv[8] = id >> 24, iv[9] = id >> 16, iv[10] = id >> 8, iv[11] = id;
}

/* Copies n bytes at stream offset off of a chunked message (slot layout) from/to buf. */
static void stream_io(uint8_t *slot, size_t off, uint8_t *buf, size_t n, int put) {
  while (n > 0) {
    size_t c = off / mtu, o = off % mtu, k = mtu - o < n ? mtu - o : n;
    uint8_t *p = slot + c * ds + HDR + o;
    if (put) memcpy(p, buf, k);
    else memcpy(buf, p, k);
    off += k, buf += k, n -= k;
  }
}

/* Seals the message read into slot (len stream bytes), writes its headers; returns its chunk count. */
static unsigned build(uint8_t *slot, size_t len) {
  uint32_t id = ++next_id;
  size_t total = len + (aead ? TAG : 0);
  unsigned cnt = (total + mtu - 1) / mtu;
  if (aead) {
    uint8_t iv[12], tag[TAG];
    int out;
    nonce_of(iv, node, id);
    if (!EVP_EncryptInit_ex(ectx, NULL, NULL, NULL, iv)) die("EVP_EncryptInit_ex");
    for (size_t off = 0; off < len; off += mtu) {
      uint8_t *p = slot + (off / mtu) * ds + HDR;
      int n = len - off < mtu ? len - off : mtu;
      if (!EVP_EncryptUpdate(ectx, p, &out, p, n) || out != n) die("EVP_EncryptUpdate");
    }
    if (!EVP_EncryptFinal_ex(ectx, tag, &out) || !EVP_CIPHER_CTX_ctrl(ectx, EVP_CTRL_GCM_GET_TAG, TAG, tag))
      die("EVP_EncryptFinal_ex");
    stream_io(slot, len, tag, TAG, 1);
  }
  for (unsigned i = 0; i < cnt; i++) {
    uint8_t *h = slot + i * ds;
    h[0] = T_DATA, h[1] = i, h[2] = cnt, h[3] = node;
    h[4] = id >> 24, h[5] = id >> 16, h[6] = id >> 8, h[7] = id;
  }
  return cnt;
}

/* Drains the TUN (until EAGAIN or BATCH reads) and sends what it read with one sendmmsg. */
static void tun_drain(void) {
  static struct mmsghdr mm[BATCH * 2];
  static struct iovec iov[BATCH * 2];
  static union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } cm[BATCH * 2];
  unsigned n = 0;
  for (int s = 0; s < BATCH; s++) {
    uint8_t *slot = txbuf + (size_t)s * MAXCH * ds;
    ssize_t len = readv(tunfd, txiov[s], MAXCH);
    if (len < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (len < 0) die("readv tun");
    if (len <= VNET || (size_t)len + TAG > (size_t)MAXCH * mtu) continue;
    unsigned cnt = build(slot, len);
    size_t total = len + (aead ? TAG : 0);
    st_tx_msgs++, st_tx_dgrams += cnt;
    for (unsigned first = 0; first < cnt && n < BATCH * 2; first += gso_max) {
      unsigned k = cnt - first < gso_max ? cnt - first : gso_max;
      size_t bytes = (size_t)(k - 1) * ds + HDR + (first + k == cnt ? total - (size_t)(cnt - 1) * mtu : mtu);
      struct msghdr *m = &mm[n].msg_hdr;
      memset(m, 0, sizeof(*m));
      iov[n].iov_base = slot + (size_t)first * ds, iov[n].iov_len = bytes;
      m->msg_iov = &iov[n], m->msg_iovlen = 1;
      if (k > 1) {
        m->msg_control = cm[n].buf, m->msg_controllen = sizeof(cm[n].buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(m);
        c->cmsg_level = SOL_UDP, c->cmsg_type = UDP_SEGMENT, c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = ds;
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
      }
      n++;
    }
    if (n + (MAXCH + gso_max - 1) / gso_max > BATCH * 2) break;
  }
  for (unsigned done = 0; done < n;) {
    int r = sendmmsg(udpfd, mm + done, n - done, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { st_tx_err++, done++; continue; } /* e.g. ECONNREFUSED before the peer is up */
    done += r;
  }
}

/* Opens (aead) and writes one message whose stream is iov[0..n) of total bytes to the TUN. */
static void deliver(struct iovec *iov, int n, size_t total, uint8_t from, uint32_t id) {
  size_t len = total;
  if (aead) {
    uint8_t iv[12], tag[TAG];
    int out;
    if (total < VNET + 1 + TAG) { st_rx_bad++; return; }
    len = total - TAG;
    size_t off = 0, t = 0;
    nonce_of(iv, from, id);
    if (!EVP_DecryptInit_ex(dctx, NULL, NULL, NULL, iv)) die("EVP_DecryptInit_ex");
    for (int i = 0; i < n; i++) { /* decrypt in place up to len, collect the tag after it */
      uint8_t *p = iov[i].iov_base;
      size_t l = iov[i].iov_len, c = off < len ? (len - off < l ? len - off : l) : 0;
      if (c > 0 && (!EVP_DecryptUpdate(dctx, p, &out, p, c) || (size_t)out != c)) die("EVP_DecryptUpdate");
      memcpy(tag + t, p + c, l - c), t += l - c;
      off += l;
    }
    if (t != TAG || !EVP_CIPHER_CTX_ctrl(dctx, EVP_CTRL_GCM_SET_TAG, TAG, tag) ||
        EVP_DecryptFinal_ex(dctx, tag, &out) <= 0) {
      st_rx_auth++;
      return;
    }
    size_t keep = 0; /* trim the iovecs to the plaintext */
    int k = 0;
    for (; k < n && keep < len; k++) {
      if (keep + iov[k].iov_len > len) iov[k].iov_len = len - keep;
      keep += iov[k].iov_len;
    }
    n = k;
  }
  if (len <= VNET) { st_rx_bad++; return; }
  st_rx_msgs++;
  if (writev(tunfd, iov, n) < 0) st_tun_err++;
}

/* Takes one chunk (not part of a message whole in its buffer) into the reassembly buffer. */
static void reassemble(const uint8_t *d, size_t dl) {
  uint8_t idx = d[1], cnt = d[2], from = d[3];
  uint32_t id = (uint32_t)d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7];
  if (!ra.active || ra.id != id || ra.node != from || ra.cnt != cnt) {
    memset(&ra, 0, sizeof(ra)); /* a newer message: the unfinished one is lost */
    ra.active = 1, ra.id = id, ra.node = from, ra.cnt = cnt;
  }
  if (ra.have[idx]) return;
  ra.have[idx] = 1, ra.got++;
  memcpy(rabuf + (size_t)idx * mtu, d + HDR, dl - HDR);
  if (idx == cnt - 1) ra.total = (size_t)idx * mtu + dl - HDR;
  st_rx_copied++;
  if (ra.got == cnt) {
    struct iovec v = {rabuf, ra.total};
    ra.active = 0;
    deliver(&v, 1, ra.total, from, id);
  }
}

/* Checks a chunk header and length: returns 1 when valid. */
static int chunk_ok(const uint8_t *d, size_t dl) {
  if (dl <= HDR || dl > ds || d[0] != T_DATA) return 0;
  if (d[2] == 0 || d[2] > MAXCH || d[1] >= d[2]) return 0;
  return d[1] == d[2] - 1 || dl == ds; /* all chunks but the last are full */
}

/* Handles one receive buffer of len bytes holding datagrams of seg bytes (the last may be shorter). */
static void on_buffer(uint8_t *b, size_t len, size_t seg) {
  static struct iovec v[MAXCH];
  for (size_t off = 0; off < len;) {
    size_t dl = len - off < seg ? len - off : seg;
    uint8_t *d = b + off;
    st_rx_dgrams++;
    if (!chunk_ok(d, dl)) { st_rx_bad++, off += dl; continue; }
    unsigned cnt = d[2], i = 0;
    if (d[1] == 0 && (cnt == 1 || (seg == ds && off + (size_t)(cnt - 1) * seg < len))) { /* whole: writev */
      size_t total = 0;
      for (; i < cnt; i++) {
        uint8_t *e = d + (size_t)i * seg;
        size_t el = len - (off + i * seg) < seg ? len - (off + i * seg) : seg;
        if (!chunk_ok(e, el) || e[1] != i || e[2] != cnt || memcmp(e + 3, d + 3, 5) != 0) break;
        v[i].iov_base = e + HDR, v[i].iov_len = el - HDR, total += el - HDR;
      }
      if (i == cnt) {
        st_rx_dgrams += cnt - 1;
        deliver(v, cnt, total, d[3], (uint32_t)d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7]);
        off += (size_t)cnt * seg;
        continue;
      }
    }
    reassemble(d, dl);
    off += dl;
  }
}

/* Drains the UDP socket: one recvmmsg of up to BATCH (GRO) buffers. */
static void udp_drain(void) {
  static struct mmsghdr mm[BATCH];
  static struct iovec iov[BATCH];
  static union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cm[BATCH];
  for (int i = 0; i < BATCH; i++) {
    memset(&mm[i].msg_hdr, 0, sizeof(mm[i].msg_hdr));
    iov[i].iov_base = rxbuf + (size_t)i * RXBUF, iov[i].iov_len = RXBUF;
    mm[i].msg_hdr.msg_iov = &iov[i], mm[i].msg_hdr.msg_iovlen = 1;
    mm[i].msg_hdr.msg_control = cm[i].buf, mm[i].msg_hdr.msg_controllen = sizeof(cm[i].buf);
  }
  int n = recvmmsg(udpfd, mm, BATCH, MSG_DONTWAIT, NULL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR || errno == ECONNREFUSED) return;
    die("recvmmsg");
  }
  for (int i = 0; i < n; i++) {
    size_t len = mm[i].msg_len, seg = len;
    if (mm[i].msg_hdr.msg_flags & MSG_TRUNC) { st_rx_bad++; continue; }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mm[i].msg_hdr); c; c = CMSG_NXTHDR(&mm[i].msg_hdr, c))
      if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        int g;
        memcpy(&g, CMSG_DATA(c), sizeof(g));
        if (g > 0) seg = g;
      }
    if (seg == 0 || seg > len) seg = len;
    on_buffer(rxbuf + (size_t)i * RXBUF, len, seg);
  }
}

static void setup(const char *tun, const char *local, const char *peer, int port) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  if ((tunfd = open("/dev/net/tun", O_RDWR | O_NONBLOCK)) < 0) die("open /dev/net/tun");
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", tun);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(tunfd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  if (ioctl(tunfd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) die("TUNSETOFFLOAD");
  struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(port)}, pa = la;
  if (inet_pton(AF_INET, local, &la.sin_addr) != 1 || inet_pton(AF_INET, peer, &pa.sin_addr) != 1) {
    fprintf(stderr, "relay: bad --local/--peer address\n");
    exit(2);
  }
  int one = 1, buf = 4 << 20;
  if ((udpfd = socket(AF_INET, SOCK_DGRAM, 0)) < 0) die("socket");
  if (setsockopt(udpfd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0) die("UDP_GRO");
  if (setsockopt(udpfd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) < 0) die("SO_RCVBUFFORCE");
  if (setsockopt(udpfd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)) < 0) die("SO_SNDBUFFORCE");
  if (bind(udpfd, (struct sockaddr *)&la, sizeof(la)) < 0) die("bind");
  if (connect(udpfd, (struct sockaddr *)&pa, sizeof(pa)) < 0) die("connect");
}

int main(int argc, char **argv) {
  const char *tun = "cr0", *local = NULL, *peer = NULL;
  int port = 50999;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--aead")) { aead = 1; continue; }
    if (!strcmp(a, "--spin")) { spin = 1; continue; } /* diagnostic: poll without sleeping */
    if (!v) { fprintf(stderr, "relay: %s needs a value\n", a); return 2; }
    if (!strcmp(a, "--tun")) tun = v;
    else if (!strcmp(a, "--mtu")) mtu = strtoul(v, NULL, 10);
    else if (!strcmp(a, "--local")) local = v;
    else if (!strcmp(a, "--peer")) peer = v;
    else if (!strcmp(a, "--port")) port = atoi(v);
    else if (!strcmp(a, "--node")) node = atoi(v);
    else { fprintf(stderr, "relay: unknown option %s\n", a); return 2; }
    i++;
  }
  if (!local || !peer || mtu < 576 || mtu > 9000 || port <= 0 || port > 65535 || node < 0 || node > 255) {
    fprintf(stderr, "usage: relay --tun NAME --mtu 576..9000 --local IP --peer IP [--port P] [--node N] [--aead] [--spin]\n");
    return 2;
  }
  ds = HDR + mtu;
  gso_max = 65507 / ds;
  if (gso_max > 64) gso_max = 64;
  if (!(txbuf = malloc((size_t)BATCH * MAXCH * ds)) || !(rxbuf = malloc((size_t)BATCH * RXBUF)) ||
      !(rabuf = malloc((size_t)MAXCH * mtu)))
    die("malloc");
  for (int s = 0; s < BATCH; s++)
    for (int i = 0; i < MAXCH; i++)
      txiov[s][i].iov_base = txbuf + ((size_t)s * MAXCH + i) * ds + HDR, txiov[s][i].iov_len = mtu;
  if (aead) {
    if (!(ectx = EVP_CIPHER_CTX_new()) || !(dctx = EVP_CIPHER_CTX_new())) die("EVP_CIPHER_CTX_new");
    if (!EVP_EncryptInit_ex(ectx, EVP_aes_256_gcm(), NULL, key, NULL) ||
        !EVP_DecryptInit_ex(dctx, EVP_aes_256_gcm(), NULL, key, NULL))
      die("EVP init");
  }
  setup(tun, local, peer, port);
  struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: poll returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct pollfd p[2] = {{.fd = tunfd, .events = POLLIN}, {.fd = udpfd, .events = POLLIN}};
  while (!stop) {
    if (poll(p, 2, spin ? 0 : -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[0].revents & POLLIN) tun_drain();
    if (p[1].revents & (POLLIN | POLLERR)) udp_drain();
  }
  fprintf(stderr,
          "relay: tx %llu msgs %llu dgrams (%llu send errors); rx %llu msgs %llu dgrams, %llu copied chunks, "
          "%llu bad, %llu auth failures, %llu tun write errors\n",
          st_tx_msgs, st_tx_dgrams, st_tx_err, st_rx_msgs, st_rx_dgrams, st_rx_copied, st_rx_bad, st_rx_auth,
          st_tun_err);
  return 0;
}
