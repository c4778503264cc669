/* File mappings: a private mapping with a page written before the capture
 * keeps the written page and the file's other pages; a shared mapping shows
 * writes made to the file after the capture (argv[1] private, argv[2]
 * shared; the test rewrites the shared file before it lets the copy go). */
#include "common.h"

int main(int argc, char **argv) {
    CHECK(argc == 3);
    int pf = open(argv[1], O_RDONLY);
    int sf = open(argv[2], O_RDWR);
    CHECK(pf >= 0 && sf >= 0);
    char *priv = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf, 0);
    char *shared = mmap(NULL, 4096, PROT_READ, MAP_SHARED, sf, 0);
    CHECK(priv != MAP_FAILED && shared != MAP_FAILED);
    close(pf);
    close(sf);
    memset(priv + 4096, 'W', 4096);
    CHECK(shared[0] == 'S');

    ready();

    for (int i = 0; i < 4 * 4096; i++)
        CHECK(priv[i] == (i / 4096 == 1 ? 'W' : 'P'));
    CHECK(memcmp(shared, "after!", 6) == 0);
    return ok();
}
