// faultline-guest workload (64-bit, freestanding): dirty every page of the data range, then
// time single-word reads in sequential / uniform random / hot-set order and report each phase
// on the serial port. See guest_abi.h for the contract. The guest runs on an emulating KVM at
// about a million instructions per second: loops are kept short and division-free (constant
// divisors compile to multiplies), and nothing uses SSE.
#include <stdint.h>

#include "qemu-integration/guest/guest_abi.h"

extern char __image_end[];
void flt_main(uint32_t cpu, uint32_t start_info);
void flt_halt_forever(void);

// The compiler may emit calls to these even in freestanding code.
void* memset(void* d, int c, unsigned long n) {
  unsigned char* p = (unsigned char*)d;
  while (n--) *p++ = (unsigned char)c;
  return d;
}
void* memcpy(void* d, const void* s, unsigned long n) {
  unsigned char* p = (unsigned char*)d;
  const unsigned char* q = (const unsigned char*)s;
  while (n--) *p++ = *q++;
  return d;
}

static inline void outb(uint16_t port, uint8_t v) {
  __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
  return ((uint64_t)hi << 32) | lo;
}

// floor(r * n / 2^64): a uniform index in [0, n) without a divide.
static inline uint64_t scale(uint64_t r, uint64_t n) {
  return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

static inline uint64_t xorshift(uint64_t* s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

// ---- serial lines ----

struct line {
  char b[256];
  uint32_t n;
};

static void put(struct line* l, const char* s) {
  while (*s && l->n < sizeof(l->b)) l->b[l->n++] = *s++;
}

static void put_u64(struct line* l, uint64_t v) {
  char t[20];
  int i = 0;
  do {
    t[i++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (i && l->n < sizeof(l->b)) l->b[l->n++] = t[--i];
}

static void put_hex(struct line* l, uint64_t v) {
  put(l, "0x");
  int shift = 60;
  while (shift > 0 && ((v >> shift) & 0xf) == 0) shift -= 4;
  for (; shift >= 0; shift -= 4) {
    if (l->n < sizeof(l->b)) l->b[l->n++] = "0123456789abcdef"[(v >> shift) & 0xf];
  }
}

static void put_kv(struct line* l, const char* key, uint64_t v) {
  put(l, " ");
  put(l, key);
  put(l, "=");
  put_u64(l, v);
}

static void start_line(struct line* l, uint32_t cpu) {
  l->n = 0;
  put(l, "FLT cpu=");
  put_u64(l, cpu);
}

// One serial port for every CPU (QEMU): a line goes out whole, never interleaved.
static volatile uint32_t serial_lock;

static void send(struct line* l) {
  while (__atomic_exchange_n(&serial_lock, 1, __ATOMIC_ACQUIRE)) __asm__ volatile("pause");
  for (uint32_t i = 0; i < l->n; i++) outb(FLT_SERIAL_PORT, (uint8_t)l->b[i]);
  outb(FLT_SERIAL_PORT, '\n');
  __atomic_store_n(&serial_lock, 0, __ATOMIC_RELEASE);
}

// ---- configuration ----

struct config {
  uint32_t cpu, ncpus, mode, rounds, churn_permille;
  uint64_t seed, touches, slow;
  uint64_t first_page, npages;  // the data range, in pages
  uint64_t ram_end;
  int from_vmm;
};

// Used instead of the VMM's mailbox when booted by a plain PVH loader.
static struct flt_mailbox pvh_mailbox;

// End of the RAM range holding the image, from the PVH memmap; 0 if unknown.
static uint64_t pvh_ram_end(uint32_t start_info) {
  const struct flt_pvh_start_info* si = (const struct flt_pvh_start_info*)(uintptr_t)start_info;
  if (start_info == 0 || si->magic != FLT_PVH_START_MAGIC || si->version < 1) return 0;
  const struct flt_pvh_memmap_entry* e =
      (const struct flt_pvh_memmap_entry*)(uintptr_t)si->memmap_paddr;
  for (uint32_t i = 0; i < si->memmap_entries && i < 128; i++) {
    if (e[i].type == FLT_PVH_MEMMAP_RAM && e[i].addr <= FLT_IMAGE_BASE &&
        e[i].addr + e[i].size > FLT_IMAGE_BASE) {
      return e[i].addr + e[i].size;
    }
  }
  return 0;
}

static volatile struct flt_mailbox* configure(uint32_t cpu, uint32_t start_info, struct config* c) {
  volatile struct flt_mailbox* m = (volatile struct flt_mailbox*)FLT_MAILBOX_GPA;
  uint64_t image_end = ((uint64_t)(uintptr_t)__image_end + 4095) & ~4095ull;
  uint64_t start;
  if (m->magic == FLT_MAILBOX_MAGIC && m->version == FLT_ABI_VERSION) {
    c->from_vmm = 1;
    c->ram_end = m->ram_size;
    c->seed = m->seed;
    c->touches = m->touches;
    c->slow = m->slow_cycles;
    c->mode = m->mode;
    c->rounds = m->rounds;
    c->ncpus = m->num_cpus;
    c->churn_permille = m->churn_permille;
    start = image_end;
  } else {
    m = &pvh_mailbox;
    cpu = 0;
    c->from_vmm = 0;
    c->ram_end = pvh_ram_end(start_info);
    if (c->ram_end == 0) c->ram_end = FLT_PVH_DEFAULT_RAM;
    c->seed = 1;
    c->touches = c->slow = 0;
    c->mode = c->rounds = c->ncpus = c->churn_permille = 0;
    start = c->ram_end >= 2 * FLT_PVH_DATA_START ? FLT_PVH_DATA_START : image_end;
  }
  if (c->touches == 0) c->touches = FLT_DEFAULT_TOUCHES;
  if (c->slow == 0) c->slow = FLT_DEFAULT_SLOW_CYCLES;
  if (c->mode == 0) c->mode = FLT_MODE_DEFAULT;
  if (c->rounds == 0) c->rounds = FLT_DEFAULT_ROUNDS;
  if (c->ncpus == 0) c->ncpus = 1;
  if (c->churn_permille > 1000) c->churn_permille = 1000;
  if (c->ncpus > FLT_MAX_CPUS) c->ncpus = FLT_MAX_CPUS;
  if (c->ram_end > FLT_MAX_RAM) c->ram_end = FLT_MAX_RAM;
  c->ram_end &= ~4095ull;
  if (c->ram_end < start) c->ram_end = start;
  c->cpu = cpu;
  c->first_page = start >> 12;
  c->npages = (c->ram_end - start) >> 12;
  if (cpu == 0) {
    m->data_start = start;
    m->data_end = c->ram_end;
  }
  return m;
}

// ---- phases ----

// CPU c dirties pages c, c+K, c+2K, ... of the range (K = CPU count).
static void dirty_phase(volatile struct flt_mailbox* m, const struct config* c) {
  volatile struct flt_cpu_status* st = &m->cpu[c->cpu];
  st->phase = FLT_PHASE_DIRTY;
  uint64_t t0 = rdtsc();
  uint64_t end = c->first_page + c->npages, n = 0;
  for (uint64_t p = c->first_page + c->cpu; p < end; p += c->ncpus) {
    *(volatile uint64_t*)(uintptr_t)(p << 12) = flt_page_value(c->seed, p);
    st->heartbeat++;
    n++;
  }
  uint64_t t1 = rdtsc();
  struct line l;
  start_line(&l, c->cpu);
  put(&l, " phase=dirty");
  put_kv(&l, "pages", n);
  put_kv(&l, "cycles", t1 - t0);
  send(&l);
}

// CPU c rewrites word 1 of pages c, c+K, ... of the hot block until the VMM says stop.
static void churn_phase(volatile struct flt_mailbox* m, const struct config* c) {
  volatile struct flt_cpu_status* st = &m->cpu[c->cpu];
  st->phase = FLT_PHASE_CHURN;
  const uint64_t hot = c->npages * c->churn_permille / 1000;  // 0: idle, waits only
  uint64_t passes = 0, writes = 0;
  while (!m->churn_stop) {
    ++passes;
    if (hot == 0) __asm__ volatile("pause");
    for (uint64_t p = c->first_page + c->cpu; p < c->first_page + hot && !m->churn_stop;
         p += c->ncpus) {
      ((volatile uint64_t*)(uintptr_t)(p << 12))[1] = passes;
      st->heartbeat++;
      writes++;
    }
  }
  struct line l;
  start_line(&l, c->cpu);
  put(&l, " phase=churn");
  put_kv(&l, "passes", passes);
  put_kv(&l, "writes", writes);
  send(&l);
  // Quiesced: nothing more is written until the VMM says go (churn_stop = 2; the destination
  // VMM's copy of the mailbox says so after the migration).
  while (m->churn_stop < 2) __asm__ volatile("pause");
}

// Every CPU waits until all have reached `phase` (plain stores and loads: x86 is TSO).
static void barrier(volatile struct flt_mailbox* m, const struct config* c, uint32_t phase) {
  for (uint32_t i = 0; i < c->ncpus; i++) {
    while (m->cpu[i].phase < phase) {
    }
  }
}

struct touch_stats {
  uint64_t min, max, slow, bad, total;
  uint32_t hist[64];   // hist[b]: touches taking [2^b, 2^(b+1)) cycles
  uint32_t fine[256];  // quarter-octave buckets, see fine_bucket (printed on "hist=" lines)
};

// Bucket 4*b + q holds touches taking [2^b * (1 + q/4), 2^b * (1 + (q+1)/4)) cycles, b >= 2.
static uint32_t fine_bucket(uint64_t d) {
  uint32_t b = 63 - __builtin_clzll(d | 1);
  return b < 2 ? 4 * b : 4 * b + (uint32_t)((d >> (b - 2)) & 3);
}

// "FLT cpu=C hist=PHASE round=R q=I:N,I:N,…" with the non-empty fine buckets, split over as
// many lines as needed (each line repeats the prefix; readers concatenate the q= lists).
static void put_hist(const struct config* c, const char* phase, uint32_t round,
                     const struct touch_stats* s) {
  struct line l;
  uint32_t i = 0;
  while (i < 256) {
    start_line(&l, c->cpu);
    put(&l, " hist=");
    put(&l, phase);
    put_kv(&l, "round", round);
    put(&l, " q=");
    int first = 1;
    for (; i < 256 && l.n < sizeof(l.b) - 24; i++) {
      if (s->fine[i] == 0) continue;
      if (!first) put(&l, ",");
      first = 0;
      put_u64(&l, i);
      put(&l, ":");
      put_u64(&l, s->fine[i]);
    }
    if (!first) send(&l);
  }
}

// The smallest log2-bucket upper bound covering `rank` touches (capped at the maximum).
static uint64_t percentile(const struct touch_stats* s, uint64_t rank) {
  uint64_t seen = 0;
  for (int b = 0; b < 64; b++) {
    seen += s->hist[b];
    if (seen >= rank) {
      uint64_t hi = b >= 63 ? ~0ull : (2ull << b) - 1;
      return hi < s->max ? hi : s->max;
    }
  }
  return s->max;
}

static void touch_phase(volatile struct flt_mailbox* m, const struct config* c, uint32_t phase,
                        uint32_t round, uint64_t* rng) {
  static const char* const kNames[] = {"", "", "", "", "seq", "random", "hot"};
  volatile struct flt_cpu_status* st = &m->cpu[c->cpu];
  st->phase = phase;
  st->round = round;
  struct touch_stats s;
  memset(&s, 0, sizeof(s));
  s.min = ~0ull;
  const int verify = (c->mode & FLT_MODE_DIRTY) != 0;
  const uint64_t n = c->touches, npages = c->npages, first = c->first_page;
  // seq: each CPU starts at its own offset and walks forward, wrapping.
  uint64_t seq = scale(xorshift(rng), npages);
  // hot: 10% of the pages, at a random place, get 90% of the touches.
  uint64_t hot_n = npages / 10 ? npages / 10 : 1;
  uint64_t hot_base = scale(xorshift(rng), npages - hot_n + 1);
  uint64_t t_start = rdtsc();
  for (uint64_t i = 0; i < n; i++) {
    uint64_t page;
    if (phase == FLT_PHASE_SEQ) {
      page = seq;
      if (++seq == npages) seq = 0;
    } else if (phase == FLT_PHASE_RANDOM) {
      page = scale(xorshift(rng), npages);
    } else {
      uint64_t r = xorshift(rng);
      if ((((r >> 48) * 10) >> 16) < 9) {
        page = hot_base + scale(r << 16, hot_n);
      } else {
        page = scale(r << 16, npages);
      }
    }
    page += first;
    const volatile uint64_t* p = (const volatile uint64_t*)(uintptr_t)(page << 12);
    uint64_t t0 = rdtsc();
    uint64_t v = *p;
    uint64_t d = rdtsc() - t0;
    if (d < s.min) s.min = d;
    if (d > s.max) s.max = d;
    if (d > c->slow) s.slow++;
    s.hist[63 - __builtin_clzll(d | 1)]++;
    s.fine[fine_bucket(d)]++;
    if (verify && v != flt_page_value(c->seed, page)) s.bad++;
    st->heartbeat++;
  }
  s.total = rdtsc() - t_start;
  st->bad += s.bad;
  if (n == 0) s.min = 0;

  struct line l;
  start_line(&l, c->cpu);
  put(&l, " phase=");
  put(&l, kNames[phase]);
  put_kv(&l, "round", round);
  put_kv(&l, "touches", n);
  put_kv(&l, "cycles_min", s.min);
  put_kv(&l, "cycles_p50", percentile(&s, (n + 1) / 2));
  put_kv(&l, "cycles_p99", percentile(&s, (n * 99 + 99) / 100));
  put_kv(&l, "cycles_max", s.max);
  put_kv(&l, "slow", s.slow);
  put_kv(&l, "bad", s.bad);
  put_kv(&l, "cycles_total", s.total);
  send(&l);
  put_hist(c, kNames[phase], round, &s);
}

// ---- the other vCPUs under QEMU ----

extern const char flt_ap_tramp[], flt_ap_tramp_end[];
extern volatile uint32_t flt_boot_plain, flt_ap_start_info;

static void spin_cycles(uint64_t n) {
  const uint64_t t0 = rdtsc();
  while (rdtsc() - t0 < n) __asm__ volatile("pause");
}

// INIT, then SIPI twice, to every CPU but this one (xAPIC, destination shorthand "all
// excluding self"), as the MP start-up protocol asks. Each AP runs flt_ap_tramp, takes the
// next CPU index and enters like a vCPU of faultline-vmm; APs beyond the mailbox's count park.
static void start_aps(uint32_t start_info) {
  volatile uint8_t* dst = (volatile uint8_t*)FLT_AP_TRAMPOLINE_GPA;
  for (const char* p = flt_ap_tramp; p < flt_ap_tramp_end; p++) *dst++ = (uint8_t)*p;
  flt_ap_start_info = start_info;
  volatile uint32_t* icr_lo = (volatile uint32_t*)(uintptr_t)(FLT_LAPIC_GPA + 0x300);
  volatile uint32_t* icr_hi = (volatile uint32_t*)(uintptr_t)(FLT_LAPIC_GPA + 0x310);
  *icr_hi = 0;
  *icr_lo = 0x000C4500;   // INIT, level assert, all excluding self
  spin_cycles(20000000);  // ~10 ms
  for (int i = 0; i < 2; i++) {
    *icr_hi = 0;
    *icr_lo = 0x000C4600 | (FLT_AP_TRAMPOLINE_GPA >> 12);  // SIPI, vector = start page
    spin_cycles(1000000);
  }
}

void flt_main(uint32_t cpu, uint32_t start_info) {
  struct config c;
  volatile struct flt_mailbox* m = configure(cpu, start_info, &c);
  if (cpu == 0 && flt_boot_plain && c.from_vmm && c.ncpus > 1) start_aps(start_info);
  volatile struct flt_cpu_status* st = &m->cpu[c.cpu];
  if (c.cpu >= c.ncpus) return;  // a vCPU the mailbox does not count: park it
  st->phase = FLT_PHASE_BOOT;

  struct line l;
  start_line(&l, c.cpu);
  put(&l, " boot");
  put_kv(&l, "ram", c.ram_end);
  put(&l, " data=");
  put_hex(&l, c.first_page << 12);
  put(&l, "-");
  put_hex(&l, c.ram_end);
  put_kv(&l, "pages", c.npages);
  put(&l, " mode=");
  put_hex(&l, c.mode);
  put_kv(&l, "touches", c.touches);
  put_kv(&l, "rounds", c.rounds);
  put_kv(&l, "cpus", c.ncpus);
  put(&l, c.from_vmm ? " abi=vmm" : " abi=pvh");
  send(&l);

  if (c.npages == 0) c.mode &= ~(FLT_MODE_SEQ | FLT_MODE_RANDOM | FLT_MODE_HOT);
  if (c.mode & FLT_MODE_DIRTY) dirty_phase(m, &c);
  st->phase = FLT_PHASE_DIRTY_DONE;
  barrier(m, &c, FLT_PHASE_DIRTY_DONE);  // touches verify pages other CPUs dirtied
  if ((c.mode & FLT_MODE_CHURN) && c.npages != 0) churn_phase(m, &c);

  uint64_t rng = c.seed ^ ((uint64_t)(c.cpu + 1) * 0x9E3779B97F4A7C15ull);
  if (rng == 0) rng = 1;
  for (uint32_t r = 0; r < c.rounds; r++) {
    if (c.mode & FLT_MODE_SEQ) touch_phase(m, &c, FLT_PHASE_SEQ, r, &rng);
    if (c.mode & FLT_MODE_RANDOM) touch_phase(m, &c, FLT_PHASE_RANDOM, r, &rng);
    if (c.mode & FLT_MODE_HOT) touch_phase(m, &c, FLT_PHASE_HOT, r, &rng);
  }

  start_line(&l, c.cpu);
  put(&l, " done");
  put_kv(&l, "bad", st->bad);
  send(&l);
  st->phase = FLT_PHASE_DONE;
  if (c.cpu != 0) return;

  barrier(m, &c, FLT_PHASE_DONE);
  uint64_t bad = 0;
  for (uint32_t i = 0; i < c.ncpus; i++) bad += m->cpu[i].bad;
  l.n = 0;
  put(&l, "FLT done");
  put_kv(&l, "cpus", c.ncpus);
  put_kv(&l, "bad", bad);
  send(&l);
  outb(FLT_EXIT_PORT, bad != 0);
}
