/* Random process layouts for the equivalence test (restore_layouts.rs).
 *
 *   layout DIR SEED...   builds the layout of every SEED (areas of random
 *                        sizes, dense/sparse/zero/untouched pages, private
 *                        file maps, mprotect, mremap, MADV_DONTNEED), and
 *                        for about a third of the seeds 1-8 threads
 *                        (glibc's stacks or their own mmap'd ones, TLS
 *                        values, a filled buffer on their stack; blocked
 *                        in an untimed or timed futex wait, a condition
 *                        variable or nanosleep, or spinning in bursts)
 *   layout DIR sparse    the capture bug's layout: a 64 MiB brk heap and a
 *                        16 MiB anonymous area with every fourth page
 *                        untouched
 *
 * Then it prints its report (one line per area: seed, index, kind, length,
 * protections by page run, checksum) and "ready", and waits on stdin. Every
 * byte it later sends: 'r' prints the report again (the copy's must equal
 * the original's), 'p' runs the post-restore checks (anonymous pages read
 * zero after MADV_DONTNEED, private file pages read the file again) and
 * prints "post ok" or what failed, 'a' the same on anonymous areas only,
 * 't' asks every thread to check itself (its thread id, TLS and stack
 * buffer are those it had) and prints "threads ok N" or what failed and
 * "threads failed", 'q' exits 0. The thread decisions come from a
 * generator of their own, so a seed's areas are those it had before
 * threads were added.
 *
 * Files for file maps are written in DIR, named by seed and area, and
 * must not change while a snapshot of the process is restored. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_AREAS 4096
#define MAX_PROTS 8

enum kind { ANON, FILE_PRIVATE, FILE_UNTOUCHED, HEAP };
static const char *kind_name[] = {"anon", "file", "file-ro", "heap"};

struct prot_op { size_t off, len; int prot; };

struct area {
    unsigned long seed;
    int index;
    enum kind kind;
    unsigned char *addr;
    size_t len;
    int base_prot;
    struct prot_op prots[MAX_PROTS];
    int nprots;
    char path[512];
    off_t file_off;
};

static struct area areas[MAX_AREAS];
static int nareas;

static uint64_t rng;
static uint64_t next(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static size_t below(size_t n) { return n ? next() % n : 0; }

static void die(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(2);
}

/* Protection of every page is restored from base + ops in order. */
static void apply_prots(struct area *a) {
    if (mprotect(a->addr, a->len, a->base_prot)) die("mprotect base");
    for (int i = 0; i < a->nprots; i++)
        if (mprotect(a->addr + a->prots[i].off, a->prots[i].len, a->prots[i].prot))
            die("mprotect op");
}

static uint64_t checksum(struct area *a) {
    /* Read access for the sum, then the protections as they were. */
    if (mprotect(a->addr, a->len, PROT_READ)) die("mprotect read");
    uint64_t h = 0xcbf29ce484222325ULL;
    const uint64_t *w = (const uint64_t *)a->addr;
    for (size_t i = 0; i < a->len / 8; i++) {
        h ^= w[i] + i;
        h *= 0x100000001b3ULL;
    }
    apply_prots(a);
    return h;
}

static char prot_char(int prot) {
    if (prot & PROT_WRITE) return 'w';
    if (prot & PROT_READ) return 'r';
    return '-';
}

static void report(void) {
    for (int i = 0; i < nareas; i++) {
        struct area *a = &areas[i];
        size_t pages = a->len / PAGE;
        char *prot = malloc(pages);
        for (size_t p = 0; p < pages; p++) prot[p] = prot_char(a->base_prot);
        for (int k = 0; k < a->nprots; k++)
            for (size_t p = a->prots[k].off / PAGE; p < (a->prots[k].off + a->prots[k].len) / PAGE; p++)
                prot[p] = prot_char(a->prots[k].prot);
        printf("%lu %d %s %zu ", a->seed, a->index, kind_name[a->kind], pages);
        size_t run = 0;
        for (size_t p = 1; p <= pages; p++)
            if (p == pages || prot[p] != prot[run]) {
                printf("%c%zu", prot[run], p - run);
                run = p;
            }
        printf(" %016llx\n", (unsigned long long)checksum(a));
        free(prot);
    }
    /* The kernel's view of the same protections, from /proc/self/maps. */
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) die("open maps");
    char line[1024];
    int bad = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long s, e;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) != 3) continue;
        for (int i = 0; i < nareas; i++) {
            struct area *a = &areas[i];
            unsigned long as = (unsigned long)a->addr, ae = as + a->len;
            if (e <= as || s >= ae) continue;
            for (unsigned long p = (s > as ? s : as); p < (e < ae ? e : ae); p += PAGE) {
                size_t off = p - as;
                int want = a->base_prot;
                for (int k = 0; k < a->nprots; k++)
                    if (off >= a->prots[k].off && off < a->prots[k].off + a->prots[k].len)
                        want = a->prots[k].prot;
                char have = perms[1] == 'w' ? 'w' : perms[0] == 'r' ? 'r' : '-';
                if (have != prot_char(want) || perms[3] != 'p') bad++;
            }
        }
    }
    fclose(maps);
    printf("maps %s\n", bad ? "differ" : "agree");
}

static void fill_page(unsigned char *p, int dense) {
    uint64_t *w = (uint64_t *)p;
    if (dense) {
        for (size_t i = 0; i < PAGE / 8; i++) w[i] = next();
    } else {
        /* A few words somewhere in the page. */
        int n = 1 + below(8);
        for (int i = 0; i < n; i++) w[below(PAGE / 8)] = next() | 1;
    }
}

/* Writes to the pages of [addr, addr+len) by a random pattern. */
static void fill(unsigned char *addr, size_t len) {
    size_t pages = len / PAGE;
    switch (below(5)) {
    case 0: /* dense */
        for (size_t p = 0; p < pages; p++) fill_page(addr + p * PAGE, 1);
        break;
    case 1: { /* sparse, every k-th page untouched */
        size_t k = 2 + below(6);
        for (size_t p = 0; p < pages; p++)
            if (p % k != k - 1) fill_page(addr + p * PAGE, 0);
        break;
    }
    case 2: { /* random pages */
        size_t odds = 2 + below(15);
        for (size_t p = 0; p < pages; p++)
            if (below(odds) == 0) fill_page(addr + p * PAGE, below(2));
        break;
    }
    case 3: /* zeros written (present zero pages) and zero pages read */
        for (size_t p = 0; p < pages; p++) {
            if (below(3) == 0) memset(addr + p * PAGE, 0, PAGE);
            else if (below(2) == 0) (void)*(volatile unsigned char *)(addr + p * PAGE);
            else if (below(4) == 0) fill_page(addr + p * PAGE, 0);
        }
        break;
    default: /* untouched */
        break;
    }
}

static size_t random_pages(void) {
    size_t r = below(20);
    if (r < 12) return 1 + below(16);
    if (r < 18) return 1 + below(512);
    return 1 + below(4096);
}

/* A random page-aligned sub-range [off, off+len) of `pages` pages. */
static void sub_range(size_t pages, size_t *off, size_t *len) {
    size_t first = below(pages);
    size_t n = 1 + below(pages - first);
    *off = first * PAGE;
    *len = n * PAGE;
}

static void make_file(struct area *a, size_t pages, size_t skip, const char *dir) {
    snprintf(a->path, sizeof a->path, "%s/s%lu-a%d", dir, a->seed, a->index);
    int fd = open(a->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die("create file");
    unsigned char *buf = malloc(PAGE);
    for (size_t p = 0; p < pages + skip; p++) {
        /* Some file pages are zero: they must come back as the file's. */
        if (below(5) == 0) memset(buf, 0, PAGE);
        else for (size_t i = 0; i < PAGE / 8; i++) ((uint64_t *)buf)[i] = next();
        if (write(fd, buf, PAGE) != (ssize_t)PAGE) die("write file");
    }
    free(buf);
    a->file_off = skip * PAGE;
    a->addr = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, a->file_off);
    if (a->addr == MAP_FAILED) die("mmap file");
    close(fd);
}

/* Moves the area to a fresh place (MREMAP_FIXED into a reserved hole). */
static void move(struct area *a, size_t new_len) {
    void *hole = mmap(NULL, new_len + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (hole == MAP_FAILED) die("mmap hole");
    /* Leave a guard page on each side so the area keeps its own bounds. */
    if (munmap(hole, PAGE) || munmap((char *)hole + PAGE + new_len, PAGE)) die("munmap guard");
    void *to = mremap(a->addr, a->len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)hole + PAGE);
    if (to == MAP_FAILED) die("mremap");
    a->addr = to;
    a->len = new_len;
}

static void build_seed(unsigned long seed, const char *dir) {
    rng = seed * 0x2545f4914f6cdd1dULL + 1;
    int n = 1 + below(8);
    for (int i = 0; i < n && nareas < MAX_AREAS; i++) {
        struct area *a = &areas[nareas++];
        memset(a, 0, sizeof *a);
        a->seed = seed;
        a->index = i;
        size_t pages = random_pages();
        size_t r = below(10);
        a->kind = r < 6 ? ANON : r < 9 ? FILE_PRIVATE : FILE_UNTOUCHED;
        if (a->kind == ANON) {
            a->addr = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (a->addr == MAP_FAILED) die("mmap anon");
        } else {
            make_file(a, pages, below(3), dir);
        }
        a->len = pages * PAGE;
        a->base_prot = PROT_READ | PROT_WRITE;
        if (a->kind != FILE_UNTOUCHED) fill(a->addr, a->len);
        else for (size_t p = 0; p < pages; p += 1 + below(4)) (void)*(volatile unsigned char *)(a->addr + p * PAGE);

        /* mremap: anonymous areas may grow, shrink or move; file areas
         * shrink or move (growing past the file's end would fault). */
        if (below(4) == 0) {
            size_t new_pages = pages;
            if (a->kind == ANON && below(2)) new_pages = pages + 1 + below(64);
            else if (pages > 1 && below(2)) new_pages = 1 + below(pages - 1);
            move(a, new_pages * PAGE);
            pages = new_pages;
            if (a->kind == ANON && below(2)) fill(a->addr, a->len);
        }
        /* MADV_DONTNEED of a sub-range: zeros (anon) or the file again. */
        if (below(3) == 0) {
            size_t off, len;
            sub_range(pages, &off, &len);
            if (madvise(a->addr + off, len, MADV_DONTNEED)) die("madvise");
            if (a->kind == ANON && below(2)) fill(a->addr + off, len);
        }
        /* mprotect of up to three sub-ranges. */
        int ops = below(4);
        for (int k = 0; k < ops; k++) {
            struct prot_op *op = &a->prots[a->nprots];
            sub_range(pages, &op->off, &op->len);
            op->prot = below(3) == 0 ? PROT_NONE : PROT_READ;
            if (below(4) == 0) op->prot = PROT_READ | PROT_WRITE;
            a->nprots++;
            if (mprotect(a->addr + op->off, op->len, op->prot)) die("mprotect");
        }
    }
}

static void build_sparse(void) {
    struct area *heap = &areas[nareas++];
    memset(heap, 0, sizeof *heap);
    heap->kind = HEAP;
    heap->len = 64UL << 20;
    heap->addr = sbrk(heap->len);
    if (heap->addr == (void *)-1) die("sbrk");
    heap->base_prot = PROT_READ | PROT_WRITE;
    rng = 1;
    for (size_t p = 0; p < heap->len / PAGE; p++) fill_page(heap->addr + p * PAGE, p % 7 == 0);

    struct area *s = &areas[nareas++];
    memset(s, 0, sizeof *s);
    s->index = 1;
    s->kind = ANON;
    s->len = 16UL << 20;
    s->addr = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s->addr == MAP_FAILED) die("mmap sparse");
    s->base_prot = PROT_READ | PROT_WRITE;
    for (size_t p = 0; p < s->len / PAGE; p++)
        if (p % 4 != 3) fill_page(s->addr + p * PAGE, 0);
}

/* Threads. Each waits for its ping word to change, checks itself, and
 * answers in its pong word. */
enum thread_kind { T_FUTEX, T_TIMED, T_COND, T_SLEEP, T_SPIN };
static const char *thread_kind_name[] = {"futex", "timed-futex", "cond", "nanosleep", "spin"};
#define MAX_THREADS 1024

struct thr {
    unsigned long seed;
    int index;
    enum thread_kind kind;
    uint64_t secret;           /* TLS value and stack buffer seed */
    size_t buf_len;            /* bytes of the buffer on its stack */
    void *stack;               /* its own stack, or NULL for glibc's */
    size_t stack_len;
    pid_t tid;                 /* gettid() when it started */
    uint32_t ping, pong, ready;
    int ok;
    pthread_t handle;
};
static struct thr thrs[MAX_THREADS];
static int nthrs;
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static __thread uint64_t tls_value;
static __thread unsigned char tls_buf[256];

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *t) {
    return syscall(SYS_futex, word, op, val, t, NULL, 0);
}

static uint64_t mix(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t sum_bytes(const unsigned char *b, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ULL; }
    return h;
}

static int thread_checks(struct thr *t, const unsigned char *buf, uint64_t buf_sum) {
    if ((pid_t)syscall(SYS_gettid) != t->tid) return 0;
    if (tls_value != t->secret) return 0;
    for (int i = 0; i < 256; i++)
        if (tls_buf[i] != (unsigned char)((t->secret >> (i % 8 * 8)) ^ i)) return 0;
    return sum_bytes(buf, t->buf_len) == buf_sum;
}

static void *thread_main(void *arg) {
    struct thr *t = arg;
    tls_value = t->secret;
    for (int i = 0; i < 256; i++) tls_buf[i] = (unsigned char)((t->secret >> (i % 8 * 8)) ^ i);
    t->tid = (pid_t)syscall(SYS_gettid);
    unsigned char buf[t->buf_len];
    uint64_t state = t->secret;
    for (size_t i = 0; i < t->buf_len; i += 8) {
        uint64_t v = mix(&state);
        memcpy(buf + i, &v, 8);
    }
    uint64_t buf_sum = sum_bytes(buf, t->buf_len);
    uint32_t seen = 0;
    __atomic_store_n(&t->ready, 1, __ATOMIC_RELEASE);
    futex(&t->ready, FUTEX_WAKE_PRIVATE, 1, NULL);
    for (;;) {
        switch (t->kind) {
        case T_FUTEX:
            while (__atomic_load_n(&t->ping, __ATOMIC_ACQUIRE) == seen)
                futex(&t->ping, FUTEX_WAIT_PRIVATE, seen, NULL);
            break;
        case T_TIMED:
            while (__atomic_load_n(&t->ping, __ATOMIC_ACQUIRE) == seen) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                futex(&t->ping, FUTEX_WAIT_PRIVATE, seen, &ts);
            }
            break;
        case T_COND:
            pthread_mutex_lock(&cond_lock);
            while (__atomic_load_n(&t->ping, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&cond, &cond_lock);
            pthread_mutex_unlock(&cond_lock);
            break;
        case T_SLEEP:
            while (__atomic_load_n(&t->ping, __ATOMIC_ACQUIRE) == seen) {
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            break;
        case T_SPIN: {
            /* Bursts of user code (where a capture may find it) between
             * short sleeps, so that spinners do not eat the machine. */
            volatile uint64_t spins = 0;
            while (__atomic_load_n(&t->ping, __ATOMIC_ACQUIRE) == seen) {
                for (int i = 0; i < 20000; i++) spins++;
                struct timespec ts = {0, 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            break;
        }
        }
        seen = __atomic_load_n(&t->ping, __ATOMIC_ACQUIRE);
        t->ok = thread_checks(t, buf, buf_sum);
        __atomic_store_n(&t->pong, seen, __ATOMIC_RELEASE);
        futex(&t->pong, FUTEX_WAKE_PRIVATE, 1, NULL);
    }
    return NULL;
}

/* About a third of the seeds start 1-8 threads, decided by a generator of
 * their own (the areas of a seed stay what they were). */
static void start_threads(unsigned long seed) {
    uint64_t first = seed ^ 0x7468726561647321ULL;
    uint64_t state = mix(&first);
    if (mix(&state) % 3 != 0) return;
    int n = 1 + mix(&state) % 8;
    for (int i = 0; i < n && nthrs < MAX_THREADS; i++) {
        struct thr *t = &thrs[nthrs++];
        memset(t, 0, sizeof *t);
        t->seed = seed;
        t->index = i;
        t->kind = mix(&state) % 5;
        t->secret = mix(&state) | 1;
        t->buf_len = 8 * (1 + mix(&state) % 2048);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        if (mix(&state) % 3 == 0) {
            t->stack_len = (64 + mix(&state) % 192) * 1024;
            t->stack = mmap(NULL, t->stack_len, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
            if (t->stack == MAP_FAILED) die("mmap thread stack");
            pthread_attr_setstack(&attr, t->stack, t->stack_len);
        }
        errno = pthread_create(&t->handle, &attr, thread_main, t);
        if (errno) die("pthread_create");
        pthread_attr_destroy(&attr);
        while (!__atomic_load_n(&t->ready, __ATOMIC_ACQUIRE))
            futex(&t->ready, FUTEX_WAIT_PRIVATE, 0, NULL);
    }
}

/* Report lines of the threads (they must be the same in a copy). */
static void report_threads(void) {
    for (int i = 0; i < nthrs; i++)
        printf("%lu thread %d %s %s-stack buf %zu\n", thrs[i].seed, thrs[i].index,
               thread_kind_name[thrs[i].kind], thrs[i].stack ? "own" : "glibc",
               thrs[i].buf_len);
}

/* Pings every thread and waits (10 s at most each) for its answer. */
static void check_threads(void) {
    int failed = 0;
    for (int i = 0; i < nthrs; i++) {
        struct thr *t = &thrs[i];
        __atomic_add_fetch(&t->ping, 1, __ATOMIC_ACQ_REL);
        futex(&t->ping, FUTEX_WAKE_PRIVATE, 1, NULL);
    }
    pthread_mutex_lock(&cond_lock);
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&cond_lock);
    for (int i = 0; i < nthrs; i++) {
        struct thr *t = &thrs[i];
        uint32_t want = __atomic_load_n(&t->ping, __ATOMIC_ACQUIRE);
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        uint32_t got;
        while ((got = __atomic_load_n(&t->pong, __ATOMIC_ACQUIRE)) != want) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec > 10) break;
            struct timespec ts = {0, 100 * 1000 * 1000};
            futex(&t->pong, FUTEX_WAIT_PRIVATE, got, &ts);
        }
        if (got != want) {
            printf("thread: seed %lu thread %d (%s) did not answer\n", t->seed, t->index,
                   thread_kind_name[t->kind]);
            failed = 1;
        } else if (!t->ok) {
            printf("thread: seed %lu thread %d (%s): its tid, TLS or stack buffer changed\n",
                   t->seed, t->index, thread_kind_name[t->kind]);
            failed = 1;
        }
    }
    if (failed) printf("threads failed\n");
    else printf("threads ok %d\n", nthrs);
}

/* After a restore: memory must still behave as the kernel's would. */
static void post_checks(int files) {
    int failed = 0;
    unsigned char *file_page = malloc(PAGE);
    for (int i = 0; i < nareas; i++) {
        struct area *a = &areas[i];
        if (a->kind == HEAP || (!files && a->kind != ANON)) continue;
        size_t page = (size_t)(((uintptr_t)a->addr / PAGE + a->index) % (a->len / PAGE));
        unsigned char *p = a->addr + page * PAGE;
        if (mprotect(p, PAGE, PROT_READ | PROT_WRITE)) die("mprotect post");
        memset(p, 0xaa, PAGE);
        if (madvise(p, PAGE, MADV_DONTNEED)) die("madvise post");
        int ok = 1;
        if (a->kind == ANON) {
            for (size_t b = 0; b < PAGE; b++) if (p[b]) { ok = 0; break; }
        } else {
            int fd = open(a->path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) die("open file post");
            off_t at = a->file_off + (off_t)(page * PAGE);
            ssize_t got = pread(fd, file_page, PAGE, at);
            close(fd);
            if (got != (ssize_t)PAGE) memset(file_page + (got > 0 ? got : 0), 0, PAGE - (got > 0 ? got : 0));
            ok = memcmp(p, file_page, PAGE) == 0;
        }
        if (!ok) {
            printf("post: seed %lu area %d (%s) page %zu: not %s after MADV_DONTNEED\n",
                   a->seed, a->index, kind_name[a->kind], page,
                   a->kind == ANON ? "zero" : "the file's content");
            failed = 1;
        }
        apply_prots(a);
    }
    free(file_page);
    printf(failed ? "post failed\n" : "post ok\n");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: layout DIR SEED... | layout DIR sparse\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (strcmp(argv[2], "sparse") == 0) build_sparse();
    else for (int i = 2; i < argc; i++) build_seed(strtoul(argv[i], NULL, 10), argv[1]);
    if (strcmp(argv[2], "sparse") != 0)
        for (int i = 2; i < argc; i++) start_threads(strtoul(argv[i], NULL, 10));
    report_threads();
    report();
    printf("ready\n");
    fflush(stdout);
    char c;
    for (;;) {
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 1;
        if (c == 'r') { report_threads(); report(); printf("end\n"); }
        else if (c == 't') check_threads();
        else if (c == 'p') post_checks(1);
        else if (c == 'a') post_checks(0);
        else if (c == 'q') return 0;
        fflush(stdout);
    }
}
