// UDP GSO send cost by iovec layout (docs/bench/send-copy.md). One sendmmsg entry with UDP_SEGMENT per call.
// Usage: send_layout MODE SEGS BODY ITERS [SRC_OFFSET]; CH=<bytes> for MODE chunk.
// MODE: fast (1 iovec), secure (16 B header iovec + BODY ciphertext iovec per datagram, bodies at BODY
// stride, headers elsewhere: the layout of secure_layer.ts #gatherEntries), split/perseg/bodyonly/
// bodyalign/two/chunk (variants). Sends to 10.77.0.2:9999; run inside your own namespace with a veth
// pair and a permanent neighbour (the peer drops the otherhost frames):
//   ip netns add X; ip -n X link add v0 type veth peer name v1; ip -n X link set v0 up; ip -n X link set v1 up
//   ip -n X addr add 10.77.0.1/24 dev v0; ip -n X neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent
//   gcc -O2 -o /tmp/sl send_layout.c && perf record -g ip netns exec X /tmp/sl secure 44 1426 100000
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc,char**argv){
  const char*mode=argv[1]; int segs=atoi(argv[2]); int body=atoi(argv[3]); long iters=atol(argv[4]);
  int hdr=16, w=hdr+body;
  int fd=socket(AF_INET,SOCK_DGRAM,0);
  int sb=4<<20; setsockopt(fd,SOL_SOCKET,SO_SNDBUF,&sb,sizeof sb);
  struct sockaddr_in d={.sin_family=AF_INET,.sin_port=htons(9999)}; inet_pton(AF_INET,"10.77.0.2",&d.sin_addr);
  size_t big=1<<22; uint8_t*buf=mmap(0,big,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  uint8_t*hb=buf+(1<<21); memset(buf,0x5a,big);
  int off=argc>5?atoi(argv[5]):0;
  struct iovec iov[256]; int n=0; size_t total=(size_t)segs*w;
  if(!strcmp(mode,"fast")){ iov[0].iov_base=buf+off; iov[0].iov_len=total; n=1; }
  else if(!strcmp(mode,"secure")){ // headers in another buffer, bodies at body stride
    for(int k=0;k<segs;k++){ iov[n].iov_base=hb+k*hdr; iov[n++].iov_len=hdr; iov[n].iov_base=buf+off+(size_t)k*body; iov[n++].iov_len=body; } }
  else if(!strcmp(mode,"split")){ // same 2 pieces per segment but contiguous (one buffer laid out as FAST)
    for(int k=0;k<segs;k++){ iov[n].iov_base=buf+off+(size_t)k*w; iov[n++].iov_len=hdr; iov[n].iov_base=buf+off+(size_t)k*w+hdr; iov[n++].iov_len=body; } }
  else if(!strcmp(mode,"bodyonly")){ // bodies as separate iovecs at stride, no header iovecs (seg=body)
    w=body; total=(size_t)segs*body; for(int k=0;k<segs;k++){ iov[n].iov_base=buf+off+(size_t)k*body; iov[n++].iov_len=body; } }
  else if(!strcmp(mode,"bodyalign")){ // secure layout but each body starts 64-aligned (stride rounded)
    int st=(body+63)&~63; for(int k=0;k<segs;k++){ iov[n].iov_base=hb+k*hdr; iov[n++].iov_len=hdr; iov[n].iov_base=buf+off+(size_t)k*st; iov[n++].iov_len=body; } }
  else if(!strcmp(mode,"perseg")){ // contiguous [hdr|body] datagrams, one iovec per datagram
    for(int k=0;k<segs;k++){ iov[n].iov_base=buf+off+(size_t)k*w; iov[n++].iov_len=w; } }
  else if(!strcmp(mode,"two")){ // contiguous, two iovecs per send (halves)
    iov[0].iov_base=buf+off; iov[0].iov_len=total/2; iov[1].iov_base=buf+off+total/2; iov[1].iov_len=total-total/2; n=2; }
  else if(!strcmp(mode,"chunk")){ int ch=atoi(getenv("CH")); size_t o=0; while(o<total){ size_t l=total-o<(size_t)ch?total-o:(size_t)ch; iov[n].iov_base=buf+off+o; iov[n++].iov_len=l; o+=l; } }
  char cb[CMSG_SPACE(sizeof(uint16_t))]; memset(cb,0,sizeof cb);
  struct mmsghdr m; memset(&m,0,sizeof m);
  m.msg_hdr.msg_name=&d; m.msg_hdr.msg_namelen=sizeof d; m.msg_hdr.msg_iov=iov; m.msg_hdr.msg_iovlen=n;
  if(segs>1){ m.msg_hdr.msg_control=cb; m.msg_hdr.msg_controllen=sizeof cb; struct cmsghdr*c=CMSG_FIRSTHDR(&m.msg_hdr);
    c->cmsg_level=SOL_UDP;c->cmsg_type=UDP_SEGMENT;c->cmsg_len=CMSG_LEN(sizeof(uint16_t)); *(uint16_t*)CMSG_DATA(c)=w; }
  for(int i=0;i<2000;i++) sendmmsg(fd,&m,1,0);
  double t0=now(); long bad=0;
  for(long i=0;i<iters;i++){ if(sendmmsg(fd,&m,1,0)!=1) bad++; }
  double t1=now();
  printf("%-9s segs=%d body=%d iov=%d bytes=%zu off=%d: %.2f us/send  %.2f GB/s  fail=%ld\n",mode,segs,body,n,total,off,(t1-t0)/iters/1e3,total*iters/(t1-t0),bad);
  return 0;
}
