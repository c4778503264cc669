package thaw;

import java.lang.management.ManagementFactory;
import javax.management.MBeanServer;
import javax.management.ObjectName;

/**
 * Waits until the JIT has nothing left to compile, so that a snapshot taken
 * after the warm-up holds compiled code and no half-done compilation.
 *
 * <p>Asks HotSpot's diagnostic command {@code Compiler.queue} (what {@code jcmd
 * PID Compiler.queue} prints) through the platform MBean server: idle when no
 * compiler thread has a current compile and every compile queue says
 * {@code Empty}. Used only on warm-up invocations (their ids start with
 * {@code warmup-}), before their answer is written, so that when the last
 * warm-up answer reaches thaw the queue is empty.
 */
final class Jit {
    /** The longest one wait lasts; a JIT still busy after it is logged. */
    static final long LIMIT_NANOS = 10_000_000_000L;
    static final long POLL_MILLIS = 2;

    private static MBeanServer server;
    private static ObjectName dcmd;

    private Jit() {}

    /** Whether a Compiler.queue report shows nothing compiling or queued. */
    static boolean idle(String report) {
        String section = "";
        boolean expectEmpty = false;
        for (String raw : report.split("\n")) {
            String line = raw.trim();
            if (line.startsWith("Current compiles:")) {
                section = "current";
                continue;
            }
            if (line.endsWith("compile queue:")) {
                section = "queue";
                expectEmpty = true;
                continue;
            }
            if (line.isEmpty()) {
                section = "";
                continue;
            }
            if (section.equals("current")) {
                // "C1 CompilerThread0" alone is an idle thread; with a compile
                // id and a method it is busy.
                if (line.split("\\s+").length > 2) return false;
            } else if (section.equals("queue")) {
                if (expectEmpty && !line.equals("Empty")) return false;
                expectEmpty = false;
            }
        }
        return true;
    }

    /** Waits (polling) until the JIT is idle or the limit passes. */
    static void settle() {
        long start = System.nanoTime();
        try {
            if (server == null) {
                server = ManagementFactory.getPlatformMBeanServer();
                dcmd = new ObjectName("com.sun.management:type=DiagnosticCommand");
            }
            while (true) {
                Object report = server.invoke(dcmd, "compilerQueue", new Object[] {null},
                        new String[] {String[].class.getName()});
                if (idle(String.valueOf(report))) return;
                if (System.nanoTime() - start > LIMIT_NANOS) {
                    Bootstrap.log("the JIT was still compiling after " + LIMIT_NANOS / 1_000_000 + " ms:\n" + report);
                    return;
                }
                Thread.sleep(POLL_MILLIS);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (Exception e) {
            Bootstrap.log("cannot read the JIT's compile queue: " + e);
        }
    }
}
