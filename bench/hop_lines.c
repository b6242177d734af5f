/* hop_lines: reads a valgrind `lackey --trace-mem=yes` trace on stdin and
** counts, per hop of a ring, the instructions executed and the data cache
** lines and pages first touched: lines not touched in the K hops before.
** In a ring of N processes, a process's own lines are touched once per
** lap, so with K well below N they count as first touches every time,
** which is what a ring of 1,000 pays as cache misses; shared lines (code,
** globals) are touched every hop and do not count.
**
** Usage: hop_lines MARKER K FIRST LAST < trace
**   MARKER  hex address of an instruction run once per hop (send's entry)
**   K       hops a line may go untouched and still be warm
**   FIRST, LAST  the hops counted (skip start-up and teardown)
** Prints one summary line, then the instructions that made the most first
** touches ("address count-per-hop"), busiest first.
** Build: gcc -O2 -o hop_lines hop_lines.c (bench/hop_lines.sh does it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAB_BITS 24          /* open-addressing tables: 16 M slots each */
#define TAB_SIZE ((size_t)1 << TAB_BITS)
#define MAX_IPS 100000
#define TOP 40

typedef struct slot { uint64_t key; long last; } slot;
typedef struct ipcount { uint64_t ip; long n; } ipcount;

static slot *lines, *pages;
static ipcount ips[MAX_IPS];
static int nips;

/* The slot of key (never 0) in t, claimed if new. */
static slot *find(slot *t, uint64_t key) {
  size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - TAB_BITS));
  while (t[i].key && t[i].key != key) i = (i + 1) & (TAB_SIZE - 1);
  t[i].key = key;
  return &t[i];
}

static void count_ip(uint64_t ip) {
  for (int i = nips - 1; i >= 0; i--)
    if (ips[i].ip == ip) { ips[i].n++; return; }
  if (nips < MAX_IPS) ips[nips++] = (ipcount){ ip, 1 };
}

static int busiest(const void *a, const void *b) {
  long x = ((const ipcount *)a)->n, y = ((const ipcount *)b)->n;
  return x < y ? 1 : x > y ? -1 : 0;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: hop_lines MARKER K FIRST LAST < lackey-trace\n");
    return 2;
  }
  uint64_t marker = strtoull(argv[1], NULL, 16);
  long k = atol(argv[2]), first = atol(argv[3]), last = atol(argv[4]);
  lines = calloc(TAB_SIZE, sizeof *lines);
  pages = calloc(TAB_SIZE, sizeof *pages);
  if (!lines || !pages || last <= first) { fprintf(stderr, "hop_lines: bad range or no memory\n"); return 2; }
  char buf[256];
  long hop = 0, instr = 0, cold_lines = 0, cold_pages = 0;
  uint64_t ip = 0;
  while (fgets(buf, sizeof buf, stdin)) {
    int is_instr = buf[0] == 'I';
    if (!is_instr && !(buf[0] == ' ' && strchr("LSM", buf[1]))) continue;
    char *end;
    uint64_t addr = strtoull(buf + 3, &end, 16);
    long size = *end == ',' ? atol(end + 1) : 1;
    if (size < 1) size = 1;
    if (is_instr) {
      ip = addr;
      if (addr == marker) hop++;
    }
    if (hop < first || hop >= last) continue;
    if (is_instr) { instr++; continue; }
    for (uint64_t l = addr >> 6; l <= (addr + (uint64_t)size - 1) >> 6; l++) {
      slot *s = find(lines, l + 1);
      if (s->last == 0 || s->last < hop - k) { cold_lines++; count_ip(ip); }
      s->last = hop;
    }
    slot *s = find(pages, (addr >> 12) + 1);
    if (s->last == 0 || s->last < hop - k) cold_pages++;
    s->last = hop;
  }
  double n = (double)(last - first);
  if (hop < last) { fprintf(stderr, "hop_lines: only %ld hops in the trace\n", hop); return 1; }
  printf("%ld hops: %.0f instructions, %.1f first-touched data lines, %.1f pages per hop\n",
         last - first, instr / n, cold_lines / n, cold_pages / n);
  qsort(ips, (size_t)nips, sizeof ips[0], busiest);
  for (int i = 0; i < nips && i < TOP; i++) printf("%llx %.2f\n", (unsigned long long)ips[i].ip, ips[i].n / n);
  return 0;
}
