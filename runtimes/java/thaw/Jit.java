package thaw;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.lang.management.CompilationMXBean;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;

/**
 * Waits until the JIT has nothing left to compile, so that a snapshot taken
 * after the warm-up holds compiled code and no half-done compilation.
 *
 * <p>HotSpot's compiler threads ("C1 CompilerThread0", "C2 CompilerThread0")
 * sleep while their queues are empty. The JIT counts as idle once, for
 * {@link #QUIET_POLLS} polls in a row, none of them is running (state R in
 * {@code /proc/self/task/TID/stat}) and the total compilation time
 * ({@link CompilationMXBean}) has not moved. It reads /proc with java.io only:
 * the platform MBean server, and NIO's file channels (whose first use makes
 * a Unix socketpair for its pre-close trick), would leave a socket in the
 * process, which capture refuses. Used only on warm-up invocations (ids starting with
 * {@code warmup-}), before their answer is written, so that when the last
 * warm-up answer reaches thaw the JIT is idle.
 */
final class Jit {
    /** The longest one wait lasts; a JIT still busy after it is logged. */
    static final long LIMIT_NANOS = 10_000_000_000L;
    static final long POLL_MILLIS = 2;
    static final int QUIET_POLLS = 5;

    private Jit() {}

    /** Whether a thread state line of /proc (its `stat`) is a running compiler thread. */
    static boolean compiling(String comm, String stat) {
        if (!comm.startsWith("C1 CompilerThre") && !comm.startsWith("C2 CompilerThre")) return false;
        int close = stat.lastIndexOf(')');
        if (close < 0 || close + 2 >= stat.length()) return false;
        char state = stat.charAt(close + 2);
        return state == 'R' || state == 'D';
    }

    private static String read(File f) throws IOException {
        try (FileInputStream in = new FileInputStream(f)) {
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
    }

    /** Whether any compiler thread of this process is running now. */
    static boolean anyCompiling() {
        String[] tasks = new File("/proc/self/task").list();
        if (tasks == null) return false;
        for (String tid : tasks) {
            File t = new File("/proc/self/task", tid);
            try {
                if (compiling(read(new File(t, "comm")).trim(), read(new File(t, "stat")))) return true;
            } catch (IOException gone) {
                // the thread ended between the listing and the read
            }
        }
        return false;
    }

    /** Waits (polling) until the JIT is idle or the limit passes. */
    static void settle() {
        CompilationMXBean jit = ManagementFactory.getCompilationMXBean();
        if (jit == null) return;
        long start = System.nanoTime();
        long last = jit.getTotalCompilationTime();
        int quiet = 0;
        try {
            while (quiet < QUIET_POLLS) {
                Thread.sleep(POLL_MILLIS);
                long now = jit.getTotalCompilationTime();
                quiet = (now == last && !anyCompiling()) ? quiet + 1 : 0;
                last = now;
                if (System.nanoTime() - start > LIMIT_NANOS) {
                    Bootstrap.log("the JIT was still compiling after " + LIMIT_NANOS / 1_000_000 + " ms");
                    return;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
