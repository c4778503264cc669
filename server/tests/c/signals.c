/* Signals: a handler (SA_RESTART, with a mask), a blocked signal, an
 * ignored one, an alternate stack. */
#include "common.h"

static volatile sig_atomic_t got;
static char altstack[64 * 1024];

static void on_usr1(int sig) {
    stack_t now;
    sigaltstack(NULL, &now);
    got = sig + ((now.ss_flags & SS_ONSTACK) ? 1000 : 0);
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGHUP);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    CHECK(sigaltstack(&ss, NULL) == 0);
    signal(SIGPIPE, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    CHECK(sigprocmask(SIG_BLOCK, &block, NULL) == 0);

    ready();

    struct sigaction now;
    CHECK(sigaction(SIGUSR1, NULL, &now) == 0);
    CHECK(now.sa_handler == on_usr1);
    CHECK(now.sa_flags & SA_RESTART);
    CHECK(sigismember(&now.sa_mask, SIGHUP));
    CHECK(sigaction(SIGPIPE, NULL, &now) == 0 && now.sa_handler == SIG_IGN);
    sigset_t mask;
    CHECK(sigprocmask(SIG_BLOCK, NULL, &mask) == 0);
    CHECK(sigismember(&mask, SIGUSR2) && !sigismember(&mask, SIGUSR1));
    CHECK(raise(SIGUSR1) == 0);
    CHECK(got == SIGUSR1 + 1000);
    /* SIGUSR2 stays pending while blocked. */
    CHECK(raise(SIGUSR2) == 0);
    sigset_t pending;
    CHECK(sigpending(&pending) == 0 && sigismember(&pending, SIGUSR2));
    return ok();
}
