/* Anonymous-memory semantics a copy must keep in both restore modes
 * (issue 5, acceptance 5): memory released with MADV_DONTNEED reads as
 * zeros, an area grown with mremap has zeros in its new part, brk and the
 * stack still grow. Before the snapshot it fills anonymous areas and a
 * piece of brk heap; blocks on stdin; then (in the copy) reads the mode
 * word ("mmap" or "uffd"), checks, and prints "ok" or exits with the
 * failed check's number. No stdio or malloc before the checks: the heap
 * end is this program's to move.
 * It runs without address randomisation (it re-execs itself so), like the
 * server's functions.
 * Run with the arguments "exec MODE" it is the program a copy execs: it
 * checks that MADV_DONTNEED works for it, that its signal mask is empty,
 * and that in mmap mode it runs with address randomisation again (the
 * guard's exec), and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#define MIB (1024UL * 1024)
#define PAGE 4096UL

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + 3 + (i >> 12)) | 1; }
static void fill(unsigned char *p, size_t len, size_t seed) { for (size_t i = 0; i < len; i++) p[i] = pattern(i + seed); }
static void fail(int code, const char *what) {
    char buf[160];
    int n = snprintf(buf, sizeof buf, "anon: check %d failed: %s (errno %d)\n", code, what, errno);
    if (write(2, buf, n) < 0) {}
    _exit(code);
}
static void zeros(int code, const unsigned char *p, size_t len, const char *what) {
    for (size_t i = 0; i < len; i += 512) if (p[i] != 0) fail(code, what);
}
static void same(int code, const unsigned char *p, size_t len, size_t seed, const char *what) {
    for (size_t i = 0; i < len; i += 509) if (p[i] != pattern(i + seed)) fail(code, what);
}

/* Permissions of the mapping holding `p` in /proc/self/maps ("r--p"). */
static int perms(void *p, char out[5]) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char pr[5];
        if (sscanf(line, "%lx-%lx %4s", &s, &e, pr) == 3 && (unsigned long)p >= s && (unsigned long)p < e) {
            memcpy(out, pr, 5);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

/* Uses about `depth` KiB of stack below the current frame. */
static unsigned long deep(int depth) {
    volatile unsigned char frame[1024];
    for (int i = 0; i < 1024; i += 64) frame[i] = (unsigned char)(depth + i);
    unsigned long below = depth > 0 ? deep(depth - 1) : 0;
    return below + frame[64];
}

static void on_sys(int sig) { (void)sig; }

static int exec_child(const char *mode) {
    sigset_t blocked;
    if (sigprocmask(SIG_BLOCK, NULL, &blocked) != 0 || sigismember(&blocked, SIGINT) || sigismember(&blocked, SIGTERM)) return 5;
    int randomised = !(personality(0xffffffff) & ADDR_NO_RANDOMIZE);
    if (randomised != (strcmp(mode, "mmap") == 0)) return 6;
    unsigned char *p = mmap(NULL, 2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    memset(p, 0x33, 2 * MIB);
    if (madvise(p, 2 * MIB, MADV_DONTNEED) != 0) return 3;
    for (size_t i = 0; i < 2 * MIB; i += PAGE) if (p[i] != 0) return 4;
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "exec") == 0) return exec_child(argv[2]);
    int persona = personality(0xffffffff);
    if (!(persona & ADDR_NO_RANDOMIZE)) {
        personality(persona | ADDR_NO_RANDOMIZE);
        execv("/proc/self/exe", argv);
        return 2;
    }
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
    unsigned char *a = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    /* g: grows in place later (the 60 MiB after it are left free) */
    unsigned char *g = mmap(NULL, 64 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    unsigned char *m = mmap(NULL, 4 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    unsigned char *r = mmap(NULL, 1 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    unsigned char *u = mmap(NULL, 2 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    unsigned char *f = mmap(NULL, 1 * MIB, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (a == MAP_FAILED || g == MAP_FAILED || m == MAP_FAILED || r == MAP_FAILED || u == MAP_FAILED || f == MAP_FAILED) return 2;
    if (munmap(g + 4 * MIB, 60 * MIB) != 0) return 2;
    fill(a, 8 * MIB, 0);
    fill(g, 4 * MIB, 1);
    fill(m, 4 * MIB, 2);
    fill(r, MIB, 3);
    fill(u, 2 * MIB, 4);
    fill(f, MIB, 5);
    unsigned char *heap = sbrk(4 * MIB);
    if (heap == (void *)-1) return 2;
    fill(heap, 4 * MIB, 6);
    if (write(1, "ready\n", 6) != 6) return 3;
    char mode[8] = {0};
    if (read(0, mode, 4) != 4) return 4;
    int mmap_mode = memcmp(mode, "mmap", 4) == 0;

    /* 1. brk (first: nothing has called malloc yet): shrink into the
     * saved heap, grow again: zeros past the saved content; DONTNEED on the saved heap: zeros */
    if (sbrk(-2 * (long)MIB) == (void *)-1) fail(10, "sbrk shrink");
    if (sbrk(6 * MIB) == (void *)-1) fail(11, "sbrk grow");
    same(12, heap, 2 * MIB, 6, "heap keeps its content");
    zeros(13, heap + 2 * MIB, 6 * MIB, "regrown heap reads zeros");
    memset(heap + 2 * MIB, 0x44, 6 * MIB);
    if (madvise(heap, PAGE, MADV_DONTNEED) != 0) fail(14, "madvise heap");
    zeros(15, heap, PAGE, "DONTNEED on the heap reads zeros");
    same(16, heap + PAGE, PAGE, 6 + PAGE, "the next heap page keeps its content");

    /* 2. DONTNEED on half of a, never touched since the restore: zeros;
     * the other half keeps its content. */
    if (madvise(a, 4 * MIB, MADV_DONTNEED) != 0) fail(20, "madvise");
    zeros(21, a, 4 * MIB, "DONTNEED must read zeros");
    same(22, a + 4 * MIB, 4 * MIB, 4 * MIB, "the rest of a keeps its content");
    /* 2b. a written page, then DONTNEED with a length not a page multiple */
    a[5 * MIB] = 0xee;
    if (madvise(a + 5 * MIB, 100, MADV_DONTNEED) != 0) fail(25, "madvise (short length)");
    zeros(26, a + 5 * MIB, PAGE, "a written page reads zero after DONTNEED");
    same(27, a + 5 * MIB + PAGE, PAGE, 5 * MIB + PAGE, "the next page keeps its content");
    /* an unaligned address is refused as before */
    if (madvise(a + 1, PAGE, MADV_DONTNEED) != -1 || errno != EINVAL) fail(28, "unaligned DONTNEED must fail EINVAL");

    /* 3. g grows in place: the new part reads zeros (no SIGBUS, no image) */
    unsigned char *g2 = mremap(g, 4 * MIB, 64 * MIB, 0);
    if (g2 != g) fail(30, "mremap in place");
    same(31, g, 4 * MIB, 1, "grown area keeps its content");
    zeros(32, g + 4 * MIB, 60 * MIB, "grown part reads zeros");
    g[63 * MIB] = 1;

    /* 4. m grows and moves */
    unsigned char *m2 = mremap(m, 4 * MIB, 16 * MIB, MREMAP_MAYMOVE);
    if (m2 == MAP_FAILED) fail(40, "mremap maymove");
    same(41, m2, 4 * MIB, 2, "moved area keeps its content");
    zeros(42, m2 + 4 * MIB, 12 * MIB, "moved and grown part reads zeros");

    /* 5. read-only memory released: zeros, still read-only */
    if (mprotect(r, MIB, PROT_READ) != 0) fail(50, "mprotect");
    if (madvise(r, MIB, MADV_DONTNEED) != 0) fail(51, "madvise read-only");
    zeros(52, r, MIB, "read-only DONTNEED reads zeros");
    char pr[5];
    if (perms(r, pr) != 0 || strcmp(pr, "r--p") != 0) fail(53, "protection kept");

    /* 6. MADV_FREE succeeds (it did on the original's anonymous memory);
     * the range then reads its old content or zeros, nothing else */
    if (madvise(f, MIB, MADV_FREE) != 0) fail(60, "MADV_FREE");
    for (size_t i = 0; i < MIB; i += 509) if (f[i] != 0 && f[i] != pattern(i + 5)) fail(61, "MADV_FREE content");

    /* 7. DONTUNMAP: the content moves, the old range stays mapped, empty.
     * (Linux 6.18 here answers EINVAL even for plain anonymous memory.) */
    unsigned char *u2 = mremap(u, 2 * MIB, 2 * MIB, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
    if (u2 == MAP_FAILED && errno != EINVAL) fail(70, "mremap dontunmap");
    if (u2 != MAP_FAILED) {
        same(71, u2, 2 * MIB, 4, "DONTUNMAP moves the content");
        zeros(72, u, 2 * MIB, "DONTUNMAP leaves zeros behind");
    }

    /* 9. the stack grows below what was saved (about 2 MiB more) */
    if (deep(2048) == 0) fail(90, "deep recursion");

    /* 10. a forked child: its DONTNEED gives it zeros, not its parent */
    pid_t child = fork();
    if (child == 0) {
        if (madvise(a + 6 * MIB, MIB, MADV_DONTNEED) != 0) _exit(1);
        for (size_t i = 0; i < MIB; i += 512) if (a[6 * MIB + i] != 0) _exit(2);
        _exit(0);
    }
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) fail(100, "forked child's DONTNEED");
    same(101, a + 6 * MIB, MIB, 6 * MIB, "the parent keeps its memory");

    /* 11. a program the copy execs releases its own memory normally */
    child = fork();
    if (child == 0) {
        execl("/proc/self/exe", "anon", "exec", mmap_mode ? "mmap" : "uffd", (char *)NULL);
        _exit(127);
    }
    if (waitpid(child, &status, 0) != child) fail(110, "waitpid exec");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        errno = WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
        fail(111, "exec'd program (errno: its exit code, or 1000 + signal)");
    }

    /* 12. the allocator takes and returns a few hundred MB */
    for (int round = 0; round < 4; round++) {
        unsigned char *big = malloc(96 * MIB);
        if (!big) fail(120, "malloc");
        zeros(121, big, 96 * MIB, "fresh malloc'd memory");
        memset(big, round + 1, 96 * MIB);
        free(big);
    }
    malloc_trim(0);

    /* 13. mmap mode keeps its SIGSYS handler: the program cannot replace it */
    if (mmap_mode) {
        if (signal(SIGSYS, on_sys) != SIG_ERR || errno != EPERM) fail(130, "SIGSYS handler refused with EPERM");
    }
    if (write(1, "ok\n", 3) != 3) return 5;
    return 0;
}
