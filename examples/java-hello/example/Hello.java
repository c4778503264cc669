package example;

import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;

import thaw.Context;

/**
 * Hello world for thaw on Java: greets the event's "name", shows the context,
 * a counter the warm-up advances, a thread that keeps ticking between
 * invocations, and values that must differ in every restored copy.
 */
public final class Hello {
    private static final String GREETING = System.getenv().getOrDefault("GREETING", "hello");
    private static final AtomicLong TICKS = new AtomicLong();
    private static int invocations;
    private static int restores;

    static {
        Thread ticker = new Thread(() -> {
            while (true) {
                TICKS.incrementAndGet();
                try {
                    Thread.sleep(50);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }, "ticker");
        ticker.setDaemon(true);
        ticker.start();
        thaw.Runtime.onRestore(() -> restores++);
    }

    private Hello() {}

    public static String handle(String event, Context context) {
        invocations++;
        String name = "world";
        int at = event.indexOf("\"name\"");
        if (at >= 0) {
            int start = event.indexOf('"', event.indexOf(':', at) + 1) + 1;
            int end = event.indexOf('"', start);
            if (start > 0 && end > start) name = event.substring(start, end);
        }
        System.out.println("greeting " + name);
        return "{\"" + GREETING + "\": \"" + name + "\""
                + ", \"invocation_id\": \"" + context.invocationId() + "\""
                + ", \"function\": \"" + context.function() + "\""
                + ", \"version\": \"" + context.version() + "\""
                + ", \"remaining_ms\": " + context.remainingMs()
                + ", \"invocations\": " + invocations
                + ", \"ticks\": " + TICKS.get()
                + ", \"restores\": " + restores
                + ", \"restored_copy\": " + thaw.Runtime.isCopy()
                + ", \"random\": " + Math.random()
                + ", \"thread_local_random\": " + ThreadLocalRandom.current().nextLong()
                + ", \"uuid\": \"" + UUID.randomUUID() + "\"}";
    }
}
