/* Memory patterns: heap, anonymous, sparse (zero pages), bss, read-only;
 * after the restore the heap (brk) and the stack still grow. */
#include "common.h"

static uint64_t bss[1 << 16];

static int deep(int n) {
    volatile char pad[64 * 1024];
    pad[0] = 1;
    pad[sizeof pad - 1] = 1;
    return n == 0 ? 0 : deep(n - 1) + pad[0];
}

int main(void) {
    size_t heap_n = 8u << 20;
    uint32_t *heap = malloc(heap_n);
    for (size_t i = 0; i < heap_n / 4; i++)
        heap[i] = (uint32_t)(i * 2654435761u);
    size_t anon_n = 16u << 20;
    uint8_t *anon = mmap(NULL, anon_n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(anon != MAP_FAILED);
    /* Every 37th page written: the rest stay zero pages. */
    for (size_t p = 0; p < anon_n / 4096; p += 37)
        memset(anon + p * 4096, (int)(p & 0xff) | 1, 4096);
    for (size_t i = 0; i < sizeof bss / sizeof bss[0]; i += 3)
        bss[i] = i ^ 0x5555;
    uint8_t *ro = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(ro, 0xab, 8192);
    CHECK(mprotect(ro, 8192, PROT_READ) == 0);

    ready();

    for (size_t i = 0; i < heap_n / 4; i++)
        CHECK(heap[i] == (uint32_t)(i * 2654435761u));
    for (size_t p = 0; p < anon_n / 4096; p++) {
        uint8_t want = p % 37 == 0 ? ((uint8_t)(p & 0xff) | 1) : 0;
        for (size_t j = 0; j < 4096; j += 511)
            CHECK(anon[p * 4096 + j] == want);
    }
    for (size_t i = 0; i < sizeof bss / sizeof bss[0]; i++)
        CHECK(bss[i] == (i % 3 == 0 ? (i ^ 0x5555) : 0));
    for (size_t i = 0; i < 8192; i++)
        CHECK(ro[i] == 0xab);
    /* The read-only area is still read-only. */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    char want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)ro);
    while (fgets(line, sizeof line, maps))
        if (strncmp(line, want, strlen(want)) == 0)
            found = strstr(line, " r--p ") != NULL;
    fclose(maps);
    CHECK(found);
    /* brk grows: 64 MiB more heap, written and read. */
    uint8_t *more = sbrk(64 << 20);
    CHECK(more != (void *)-1);
    memset(more, 7, 64 << 20);
    CHECK(more[(64 << 20) - 1] == 7);
    /* The stack grows by ~4 MiB. */
    CHECK(deep(60) == 60);
    return ok();
}
