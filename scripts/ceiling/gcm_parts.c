// ipsec-mb AES-256-GCM: one in-place update over a JUMBO message vs one out-of-place update per part
// into a [16 B gap | ciphertext] stride (docs/bench/send-copy.md). Checks both give the same bytes and tag.
// gcc -O2 -o /tmp/gp gcm_parts.c -ldl && BODY=1426 /tmp/gp
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dlfcn.h>
typedef void (*pre_t)(const void*,void*); typedef void (*init_t)(const void*,void*,const uint8_t*,const uint8_t*,uint64_t);
typedef void (*upd_t)(const void*,void*,uint8_t*,const uint8_t*,uint64_t); typedef void (*fin_t)(const void*,void*,uint8_t*,uint64_t);
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(){ void*h=dlopen("libIPSec_MB.so.1",RTLD_NOW); if(!h){puts(dlerror());return 1;}
 pre_t pre=dlsym(h,"aes_gcm_pre_256_vaes_avx512"); init_t init=dlsym(h,"aes_gcm_init_256_vaes_avx512");
 upd_t up=dlsym(h,"aes_gcm_enc_256_update_vaes_avx512"); fin_t fin=dlsym(h,"aes_gcm_enc_256_finalize_vaes_avx512");
 void*kd=aligned_alloc(64,2048); uint8_t ctx[128] __attribute__((aligned(64))); uint8_t key[32]={1},iv[12]={2},ad[16]={3},tag[16],tag2[16];
 pre(key,kd); int segs=44, body=atoi(getenv("BODY")), len=segs*body; uint8_t*src=aligned_alloc(64,1<<17),*dst=aligned_alloc(64,1<<17),*ref=aligned_alloc(64,1<<17);
 memset(src,7,1<<17); for(int i=0;i<len;i++) src[i]=i*31;
 // correctness: one-shot vs per-part out of place
 init(kd,ctx,iv,ad,16); up(kd,ctx,ref,src,len); fin(kd,ctx,tag,16);
 init(kd,ctx,iv,ad,16); for(int k=0;k<segs;k++) up(kd,ctx,dst+k*(body+16)+16,src+k*body,body); fin(kd,ctx,tag2,16);
 int ok=!memcmp(tag,tag2,16); for(int k=0;k<segs;k++) ok&=!memcmp(dst+k*(body+16)+16,ref+k*body,body);
 printf("per-part out-of-place == one-shot: %s\n",ok?"yes":"NO");
 for(int rep=0;rep<3;rep++){ int N=20000; double t0=now(); for(int i=0;i<N;i++){ init(kd,ctx,iv,ad,16); up(kd,ctx,src,src,len); fin(kd,ctx,tag,16);} double t1=now();
  for(int i=0;i<N;i++){ init(kd,ctx,iv,ad,16); for(int k=0;k<segs;k++) up(kd,ctx,dst+k*(body+16)+16,src+k*body,body); fin(kd,ctx,tag,16);} double t2=now();
  printf("one update in place %.2f us; %d updates out-of-place strided %.2f us\n",(t1-t0)/N/1e3,segs,(t2-t1)/N/1e3); }
}
