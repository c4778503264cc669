/* Memory operations a lazily restored copy must get right: madvise
 * (MADV_DONTNEED must give zeros, never the snapshot's data), mremap of
 * memory not faulted in yet (content must follow), munmap and a new
 * mapping at the same place (zeros). Blocks on stdin like probe.c, then
 * checks and prints "ok" or exits with the failed check's number.
 * Stdin word: "uffd" or "mmap"; both modes must give the same answers (in
 * mmap mode the restore's anonymous-memory guard gives the zeros). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1024 * 1024)
static unsigned char pattern(size_t i) { return (unsigned char)(i * 13 + 7 + (i >> 12)); }
static int fail(int code, const char *what) { fprintf(stderr, "lazy: check %d failed: %s\n", code, what); exit(code); }

int main(void) {
    unsigned char *a = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *b = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *c = mmap(NULL, 1 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED) return 2;
    for (size_t i = 0; i < 4 * MIB; i++) { a[i] = pattern(i); b[i] = pattern(i + 1); }
    memset(c, 0x5a, MIB);
    unsigned char *d = mmap(NULL, 2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 2 * MIB; i++) d[i] = pattern(i + 5);
    unsigned char *e = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *f = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < MIB; i++) { e[i] = pattern(i + 9); f[i] = 0x77; }
    if (write(1, "ready\n", 6) != 6) return 3;
    char mode[8] = {0};
    if (read(0, mode, 4) != 4) return 4;

    /* 1. DONTNEED on the first half of a, untouched since the restore */
    madvise(a, 2 * MIB, MADV_DONTNEED);
    for (size_t i = 0; i < 2 * MIB; i += 4096) {
        if (a[i] != 0) fail(10, "DONTNEED must read zero");
    }
    for (size_t i = 2 * MIB; i < 4 * MIB; i++) if (a[i] != pattern(i)) fail(12, "rest of a");

    /* 2. move b (untouched) elsewhere: its content moves with it */
    unsigned char *moved = mremap(b, 4 * MIB, 8 * MIB, MREMAP_MAYMOVE);
    if (moved == MAP_FAILED) fail(20, "mremap");
    for (size_t i = 0; i < 4 * MIB; i++) if (moved[i] != pattern(i + 1)) fail(21, "moved content");
    /* The grown part reads zero. */
    for (size_t i = 4 * MIB; i < 8 * MIB; i += 4096) if (moved[i] != 0) fail(22, "grown part zero");

    /* 3. unmap c and map fresh memory at the same place: zeros */
    munmap(c, MIB);
    unsigned char *fresh = mmap(c, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (fresh != c) fail(30, "remap at the same place");
    for (size_t i = 0; i < MIB; i += 4096) if (fresh[i] != 0) fail(31, "fresh memory zero");

    /* 4. DONTNEED after touching: zeros. Touch, write, DONTNEED, read. */
    a[3 * MIB] = 1;
    madvise(a + 3 * MIB, 4096, MADV_DONTNEED);
    if (a[3 * MIB] != 0) fail(40, "DONTNEED after a write must read zero");
    /* 6. unmap f, then move e (untouched) exactly where f was: e's content */
    munmap(f, MIB);
    unsigned char *g = mremap(e, MIB, MIB, MREMAP_MAYMOVE | MREMAP_FIXED, f);
    if (g != f) fail(60, "mremap fixed");
    for (size_t i = 0; i < MIB; i++) if (g[i] != pattern(i + 9)) fail(61, "moved over an unmapped range");

    /* 7. a freed range reused page by page (uffd: a fault there maps
     * zeros over the following pages of the range too, stopping at pages
     * already back and at the range's end) */
    unsigned char *r = a + 2 * MIB;
    madvise(r, 16 * 4096, MADV_DONTNEED);
    r[8 * 4096] = 0xa8;
    r[0] = 0xa0;
    for (size_t p = 0; p < 16; p++) {
        unsigned char want = p == 0 ? 0xa0 : p == 8 ? 0xa8 : 0;
        if (r[p * 4096] != want || r[p * 4096 + 4095] != 0 || r[p * 4096 + 1] != 0) fail(70, "reused freed range");
    }
    for (size_t i = 16 * 4096; i < 32 * 4096; i++) if (r[i] != pattern(2 * MIB + i)) fail(71, "past the freed range");

    /* 5. a forked child reads memory its parent never touched since the
     * restore: the snapshot's content, not zeros */
    d[0] = pattern(5); /* one page present in the parent */
    pid_t child = fork();
    if (child == 0) {
        for (size_t i = 0; i < 2 * MIB; i++) if (d[i] != pattern(i + 5)) _exit(50);
        _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child) fail(51, "waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail(52, "forked child saw other memory");
    for (size_t i = 0; i < 2 * MIB; i++) if (d[i] != pattern(i + 5)) fail(53, "parent after fork");
    if (write(1, "ok\n", 3) != 3) return 5;
    return 0;
}
