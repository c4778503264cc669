package thaw;

import java.io.BufferedInputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.atomic.AtomicLong;

/**
 * thaw's Java runtime: loads a handler and serves the runtime protocol.
 *
 * <p>The contract is docs/protocol.md; Java specifics are in docs/runtimes.md.
 * thaw starts {@code java ... thaw.Bootstrap} with fd 3 carrying requests, fd 4
 * carrying answers, stdout/stderr as the function's logs and THAW_HANDLER
 * ({@code pkg.Class::method}), THAW_FUNCTION, THAW_VERSION. Each frame, either
 * way:
 *
 * <pre>
 * +----------------+----------------+----------------------+--------------+
 * | header_len u32 | body_len u32   | header: JSON object  | body: bytes  |
 * | little endian  | little endian  | header_len bytes     | body_len     |
 * +----------------+----------------+----------------------+--------------+
 * </pre>
 *
 * <p>While idle the main thread sits in one blocking read(3, ...).
 */
public final class Bootstrap {
    static final int PROTOCOL = 1;
    static final int MAX_HEADER_LEN = 1 << 20;
    static final int MAX_BODY_LEN = 1 << 30;
    static final int MAX_MESSAGE_CHARS = 32 * 1024;
    static final int MAX_TRACEBACK_CHARS = 128 * 1024;
    static final int EXIT_INIT_ERROR = 1;
    static final int EXIT_PROTOCOL_ERROR = 2;

    private final OutputStream out;
    private final Method handler;
    private final boolean wantsContext;
    private final String function = env("THAW_FUNCTION", "");
    private final String version = env("THAW_VERSION", "");

    private Bootstrap(OutputStream out, Method handler) {
        this.out = out;
        this.handler = handler;
        this.wantsContext = handler != null && handler.getParameterCount() == 2;
    }

    private static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null ? dflt : v;
    }

    static void log(String msg) {
        System.err.println("thaw-runtime: " + msg);
        System.err.flush();
    }

    /** A FileDescriptor for an fd number the JVM did not open itself. */
    private static FileDescriptor fd(int n) throws ReflectiveOperationException {
        Constructor<FileDescriptor> c = FileDescriptor.class.getDeclaredConstructor(int.class);
        c.setAccessible(true);
        return c.newInstance(n);
    }

    // ---- frames ---------------------------------------------------------------

    static final class ProtocolException extends Exception {
        ProtocolException(String m) {
            super(m);
        }
    }

    static final class Frame {
        final Map<String, Object> header;
        final byte[] body;

        Frame(Map<String, Object> header, byte[] body) {
            this.header = header;
            this.body = body;
        }
    }

    /** The next frame, or null on a clean end of the stream. */
    @SuppressWarnings("unchecked")
    static Frame readFrame(DataInputStream in) throws IOException, ProtocolException {
        byte[] prefix = new byte[8];
        int got = 0;
        while (got < 8) {
            int n = in.read(prefix, got, 8 - got);
            if (n < 0) {
                if (got == 0) return null;
                throw new ProtocolException("stream ended in the middle of a frame");
            }
            got += n;
        }
        ByteBuffer b = ByteBuffer.wrap(prefix).order(ByteOrder.LITTLE_ENDIAN);
        long headerLen = b.getInt() & 0xffffffffL;
        long bodyLen = b.getInt() & 0xffffffffL;
        if (headerLen > MAX_HEADER_LEN) throw new ProtocolException("frame header of " + headerLen + " bytes is too large");
        if (bodyLen > MAX_BODY_LEN) throw new ProtocolException("frame body of " + bodyLen + " bytes is too large");
        byte[] raw = new byte[(int) headerLen];
        byte[] body = new byte[(int) bodyLen];
        try {
            in.readFully(raw);
            in.readFully(body);
        } catch (EOFException e) {
            throw new ProtocolException("stream ended in the middle of a frame");
        }
        Object header;
        try {
            header = Json.parse(new String(raw, StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw new ProtocolException("bad frame header: " + e.getMessage());
        }
        if (!(header instanceof Map)) throw new ProtocolException("frame header is not a JSON object");
        return new Frame((Map<String, Object>) header, body);
    }

    /** Writes one frame to fd 4, after the function's output. */
    void send(Map<String, Object> header, byte[] body) throws IOException {
        System.out.flush();
        System.err.flush();
        StringBuilder sb = new StringBuilder();
        Json.write(sb, header);
        byte[] raw = sb.toString().getBytes(StandardCharsets.UTF_8);
        if (raw.length > MAX_HEADER_LEN) throw new IOException("answer header of " + raw.length + " bytes exceeds the 1 MiB limit");
        ByteBuffer prefix = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        prefix.putInt(raw.length).putInt(body.length);
        byte[] all = new byte[8 + raw.length + (body.length <= 65536 ? body.length : 0)];
        System.arraycopy(prefix.array(), 0, all, 0, 8);
        System.arraycopy(raw, 0, all, 8, raw.length);
        if (body.length <= 65536) {
            System.arraycopy(body, 0, all, 8 + raw.length, body.length);
            out.write(all);
        } else {
            out.write(all);
            out.write(body);
        }
        out.flush();
    }

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int k = 0; k < kv.length; k += 2) m.put((String) kv[k], kv[k + 1]);
        return m;
    }

    // ---- errors -----------------------------------------------------------------

    /** {error_type, message, traceback} of a throwable, without the runtime's frames. */
    static Map<String, Object> describe(Throwable t) {
        String message = t.getMessage() == null ? "" : t.getMessage();
        if (message.length() > MAX_MESSAGE_CHARS) message = message.substring(0, MAX_MESSAGE_CHARS);
        StringWriter sw = new StringWriter();
        t.printStackTrace(new PrintWriter(sw));
        StringBuilder tb = new StringBuilder();
        for (String line : sw.toString().split("\n")) {
            String l = line.trim();
            if (l.startsWith("at jdk.internal.reflect.") || l.startsWith("at java.base/jdk.internal.reflect.")
                    || l.startsWith("at java.base/java.lang.reflect.Method.") || l.startsWith("at java.lang.reflect.Method.")
                    || l.startsWith("at thaw.Bootstrap")) {
                continue;
            }
            tb.append(line).append('\n');
        }
        String trace = tb.toString();
        if (trace.length() > MAX_TRACEBACK_CHARS) trace = trace.substring(trace.length() - MAX_TRACEBACK_CHARS);
        String type = t instanceof HandlerNotFound ? "HandlerNotFound" : t.getClass().getName();
        return map("error_type", type, "message", message, "traceback", trace);
    }

    /** What a reflective call threw: the handler's own exception. */
    static Throwable unwrap(Throwable t) {
        while ((t instanceof InvocationTargetException || t instanceof ExceptionInInitializerError) && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    // ---- loading ------------------------------------------------------------------

    static final class HandlerNotFound extends Exception {
        HandlerNotFound(String m) {
            super(m);
        }
    }

    /** Loads and initialises the class (its static init runs here), finds the method. */
    static Method load(String spec) throws Throwable {
        int sep = spec.indexOf("::");
        if (sep <= 0 || sep + 2 >= spec.length()) {
            throw new HandlerNotFound("THAW_HANDLER must look like pkg.Class::method, not \"" + spec + "\"");
        }
        String className = spec.substring(0, sep);
        String methodName = spec.substring(sep + 2);
        Class<?> cls;
        try {
            cls = Class.forName(className, true, Bootstrap.class.getClassLoader());
        } catch (ClassNotFoundException e) {
            throw new HandlerNotFound("no class " + className + " in the function's code");
        } catch (ExceptionInInitializerError e) {
            throw unwrap(e);
        }
        for (Method m : cls.getMethods()) {
            if (!m.getName().equals(methodName) || !Modifier.isStatic(m.getModifiers()) || m.getReturnType() != String.class) {
                continue;
            }
            Class<?>[] p = m.getParameterTypes();
            if ((p.length == 1 && p[0] == String.class)
                    || (p.length == 2 && p[0] == String.class && p[1] == Context.class)) {
                m.setAccessible(true);
                return m;
            }
        }
        throw new HandlerNotFound(className + " has no public static String " + methodName
                + "(String) or " + methodName + "(String, thaw.Context)");
    }

    // ---- requests -------------------------------------------------------------------

    void invoke(Map<String, Object> h, byte[] body) throws IOException {
        String id = h.get("id") == null ? "" : String.valueOf(h.get("id"));
        Object d = h.get("deadline_ms");
        Long deadline = d instanceof Long ? (Long) d : null;
        Map<String, String> headers = new LinkedHashMap<>();
        if (h.get("headers") instanceof Map) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) h.get("headers")).entrySet()) {
                headers.put(String.valueOf(e.getKey()), String.valueOf(e.getValue()));
            }
        }
        String fn = h.get("function") instanceof String ? (String) h.get("function") : function;
        String ver = h.get("version") instanceof String ? (String) h.get("version") : version;
        String event = new String(body, StandardCharsets.UTF_8);
        String result;
        try {
            Object r = wantsContext
                    ? handler.invoke(null, event, new Context(id, fn, ver, deadline, headers))
                    : handler.invoke(null, event);
            result = (String) r;
        } catch (Throwable t) {
            if (id.startsWith("warmup-")) Jit.settle();
            Map<String, Object> err = describe(unwrap(t));
            err.put("id", id);
            Map<String, Object> frame = map("type", "error");
            frame.putAll(err);
            send(frame, new byte[0]);
            return;
        }
        // A warm-up's answer waits for the JIT: the snapshot follows the last.
        if (id.startsWith("warmup-")) Jit.settle();
        Map<String, Object> outHeaders = new LinkedHashMap<>();
        byte[] answer;
        if (result == null) {
            answer = "null".getBytes(StandardCharsets.UTF_8);
            outHeaders.put("content-type", "application/json");
        } else {
            answer = result.getBytes(StandardCharsets.UTF_8);
            outHeaders.put("content-type", Json.valid(result) ? "application/json" : "text/plain; charset=utf-8");
        }
        send(map("type", "result", "id", id, "status", 200L, "headers", outHeaders), answer);
    }

    void restored(Map<String, Object> h) throws IOException {
        String seed = h.get("seed") instanceof String ? (String) h.get("seed") : "";
        Runtime.setCopy();
        try {
            reseed(seed);
        } catch (Throwable t) {
            Map<String, Object> d = describe(unwrap(t));
            log("reseeding failed:\n" + d.get("traceback"));
            send(map("type", "restored", "ok", false, "message",
                    "reseeding failed: " + d.get("error_type") + ": " + d.get("message")), new byte[0]);
            return;
        }
        for (Runnable hook : Runtime.hooks()) {
            try {
                hook.run();
            } catch (Throwable t) {
                Map<String, Object> d = describe(t);
                log("restore hook " + hook + " failed:\n" + d.get("traceback"));
                send(map("type", "restored", "ok", false, "message",
                        "restore hook " + hook + " raised " + d.get("error_type") + ": " + d.get("message")), new byte[0]);
                return;
            }
        }
        send(map("type", "restored", "ok", true), new byte[0]);
    }

    // ---- uniqueness after a restore ----------------------------------------------------

    private static Field field(String className, String name) throws ReflectiveOperationException {
        Field f = Class.forName(className).getDeclaredField(name);
        f.setAccessible(true);
        return f;
    }

    /**
     * Gives this copy its own random state: every copy starts from the
     * original's. Reaches the JDK's shared generators through reflection
     * (the launch opens java.lang, java.util and java.util.concurrent).
     */
    static void reseed(String seedHex) throws ReflectiveOperationException {
        SecureRandom fresh = new SecureRandom(); // NativePRNG: reads /dev/urandom
        byte[] mix = seedHex.getBytes(StandardCharsets.UTF_8);
        fresh.setSeed(mix); // mixes into the shared NativePRNG state (UUID's too)
        // Math.random() and StrictMath.random(): one shared Random each.
        for (String holder : new String[] {"java.lang.Math$RandomNumberGeneratorHolder",
                "java.lang.StrictMath$RandomNumberGeneratorHolder"}) {
            Random shared = (Random) field(holder, "randomNumberGenerator").get(null);
            long next = fresh.nextLong();
            shared.setSeed(next);
        }
        // new Random(), new SplittableRandom() and ThreadLocalRandom seed from
        // these counters (mixed with the clock, or not at all).
        for (String[] counter : new String[][] {{"java.util.Random", "seedUniquifier"},
                {"java.util.SplittableRandom", "defaultGen"},
                {"java.util.concurrent.ThreadLocalRandom", "seeder"}}) {
            AtomicLong c = (AtomicLong) field(counter[0], counter[1]).get(null);
            long next = fresh.nextLong();
            c.set(next);
        }
        // Each thread's ThreadLocalRandom state: a zero probe makes the next
        // ThreadLocalRandom.current() draw a new seed from the seeder.
        Field probe = field("java.lang.Thread", "threadLocalRandomProbe");
        for (Thread t : liveThreads()) {
            probe.setInt(t, 0);
        }
        // UUID.randomUUID() uses a shared SecureRandom: mix fresh bytes in.
        Object uuidRandom = field("java.util.UUID$Holder", "numberGenerator").get(null);
        byte[] more = new byte[32];
        fresh.nextBytes(more);
        ((SecureRandom) uuidRandom).setSeed(more);
    }

    /**
     * Every live thread, from the root thread group (no safepoint and no
     * stack walk, unlike Thread.getAllStackTraces()).
     */
    static Thread[] liveThreads() {
        ThreadGroup root = Thread.currentThread().getThreadGroup();
        while (root.getParent() != null) root = root.getParent();
        Thread[] threads = new Thread[root.activeCount() + 16];
        int n;
        while ((n = root.enumerate(threads, true)) == threads.length) {
            threads = new Thread[threads.length * 2];
        }
        return java.util.Arrays.copyOf(threads, n);
    }

    /**
     * Rounds of the reseeding run in the original, so that the code it runs
     * is compiled there rather than in every copy, beside its first
     * invocation.
     */
    static final int WARM_RESEED_ROUNDS = 16;

    /** Lower-case hex of {@code bytes} (a seed as thaw sends it). */
    static String hex(byte[] bytes) {
        StringBuilder sb = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) sb.append(Character.forDigit((b >> 4) & 15, 16)).append(Character.forDigit(b & 15, 16));
        return sb.toString();
    }

    /**
     * Runs the copy's reseeding in the original, before "ready", with seeds
     * of the size thaw sends: the classes it needs (SecureRandom's provider,
     * NativePRNG's seed writer, UUID's holder, the reflected fields and their
     * accessors, thaw.Runtime) are then loaded, linked and initialised in
     * the snapshot instead of in every copy (measured: about 100 ms per
     * restore of java-inventory without any of it), and its code compiled
     * ({@link #WARM_RESEED_ROUNDS}). Reseeding the original is harmless:
     * copies reseed again. Without the applied rounds, each copy loaded
     * NativePRNG$RandomIO$1, UnsafeIntegerFieldAccessorImpl and thaw.Runtime
     * (reading its class file deoptimised FileInputStream::<init>, compiled
     * during the warm-up) and queued compilations its first invocation then
     * ran beside (docs/runtimes.md, "Java": the first invocation).
     */
    static void warmReseed() {
        try {
            Runtime.isCopy();
            SecureRandom r = new SecureRandom();
            byte[] seed = new byte[32];
            for (int i = 0; i < WARM_RESEED_ROUNDS; i++) {
                r.nextBytes(seed);
                reseed(hex(seed));
            }
        } catch (Throwable t) {
            log("reseeding at start failed (restored copies will report it): " + t);
        }
    }

    // ---- the loop -------------------------------------------------------------------------

    void serve(DataInputStream in) throws IOException, ProtocolException {
        while (true) {
            Frame f = readFrame(in);
            if (f == null) return;
            Object type = f.header.get("type");
            if ("invoke".equals(type)) {
                invoke(f.header, f.body);
            } else if ("restored".equals(type)) {
                restored(f.header);
            } else {
                log("unknown frame type " + type);
                send(map("type", "error", "id", f.header.get("id") == null ? "" : String.valueOf(f.header.get("id")),
                        "error_type", "ProtocolError", "message", "unknown frame type " + type, "traceback", ""), new byte[0]);
            }
        }
    }

    public static void main(String[] args) {
        InputStream rawIn;
        OutputStream out;
        try {
            rawIn = new FileInputStream(fd(3));
            out = new FileOutputStream(fd(4));
        } catch (ReflectiveOperationException | RuntimeException e) {
            log("cannot open the protocol fds 3 and 4: " + e);
            System.exit(EXIT_PROTOCOL_ERROR);
            return;
        }
        String spec = env("THAW_HANDLER", "");
        // Before the handler's class initialises: a function that seeds a
        // JDK generator at init keeps its own seed until it is a copy.
        warmReseed();
        Method handler;
        try {
            handler = load(spec);
        } catch (Throwable t) {
            Map<String, Object> d = describe(unwrap(t));
            log("cannot load handler " + spec + ":\n" + d.get("traceback"));
            Map<String, Object> frame = map("type", "init_error");
            frame.putAll(d);
            try {
                new Bootstrap(out, null).send(frame, new byte[0]);
            } catch (IOException | RuntimeException e) {
                log("cannot report the init error: " + e);
            }
            System.exit(EXIT_INIT_ERROR);
            return;
        }
        Bootstrap rt = new Bootstrap(out, handler);
        try {
            rt.send(map("type", "ready", "pid", ProcessHandle.current().pid(), "runtime", "java17", "protocol", (long) PROTOCOL,
                    "java", System.getProperty("java.version")), new byte[0]);
            rt.serve(new DataInputStream(new BufferedInputStream(rawIn, 1 << 16)));
        } catch (ProtocolException e) {
            log("corrupt request stream: " + e.getMessage());
            System.exit(EXIT_PROTOCOL_ERROR);
        } catch (IOException e) {
            log("thaw stopped reading answers: " + e.getMessage());
            System.exit(EXIT_PROTOCOL_ERROR);
        }
        System.exit(0);
    }
}
