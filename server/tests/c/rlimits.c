/* Resource limits lowered before the capture are the copy's. */
#include "common.h"

int main(void) {
    struct rlimit nofile = {.rlim_cur = 123, .rlim_max = 456};
    CHECK(setrlimit(RLIMIT_NOFILE, &nofile) == 0);
    struct rlimit core = {.rlim_cur = 0, .rlim_max = 0};
    CHECK(setrlimit(RLIMIT_CORE, &core) == 0);
    struct rlimit data = {.rlim_cur = 3ull << 30, .rlim_max = RLIM_INFINITY};
    CHECK(setrlimit(RLIMIT_DATA, &data) == 0);

    ready();

    struct rlimit r;
    CHECK(getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur == 123 && r.rlim_max == 456);
    CHECK(getrlimit(RLIMIT_CORE, &r) == 0 && r.rlim_cur == 0 && r.rlim_max == 0);
    CHECK(getrlimit(RLIMIT_DATA, &r) == 0 && r.rlim_cur == 3ull << 30);
    /* The limit holds: fd 123 cannot be had. */
    CHECK(dup2(0, 200) == -1 && errno == EBADF);
    return ok();
}
