/* The working directory (argv[1]) and a relative open from it. */
#include "common.h"

int main(int argc, char **argv) {
    CHECK(argc == 2);
    CHECK(chdir(argv[1]) == 0);

    ready();

    char buf[4096];
    CHECK(getcwd(buf, sizeof buf) != NULL);
    CHECK(strcmp(buf, argv[1]) == 0);
    int fd = open("marker", O_RDONLY);
    CHECK(fd >= 0);
    char m[6] = {0};
    CHECK(read(fd, m, 5) == 5 && strcmp(m, "here!") == 0);
    return ok();
}
