/* The copy has the original's pid (in its own pid namespace), executable
 * and command line. */
#include "common.h"

int main(int argc, char **argv) {
    pid_t pid = getpid();
    char exe[4096] = {0};
    CHECK(readlink("/proc/self/exe", exe, sizeof exe - 1) > 0);

    ready();

    CHECK(syscall(SYS_getpid) == pid);
    CHECK(getpid() == pid);
    char now[4096] = {0};
    CHECK(readlink("/proc/self/exe", now, sizeof now - 1) > 0);
    CHECK(strcmp(now, exe) == 0);
    CHECK(argc == 2 && strcmp(argv[1], "an-argument") == 0);
    char comm[64] = {0};
    int fd = open("/proc/self/comm", O_RDONLY);
    CHECK(fd >= 0 && read(fd, comm, sizeof comm - 1) > 0);
    CHECK(strncmp(comm, "identity", 8) == 0);
    return ok();
}
