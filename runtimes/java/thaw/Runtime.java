package thaw;

import java.util.ArrayList;
import java.util.List;

/**
 * Helpers for functions that run on thaw.
 *
 * <pre>
 * static { thaw.Runtime.onRestore(() -&gt; pool.reconnect()); }
 * </pre>
 */
public final class Runtime {
    private static final List<Runnable> HOOKS = new ArrayList<>();
    private static volatile boolean copy;

    private Runtime() {}

    /**
     * Registers a hook that runs in every copy restored from a snapshot, after
     * the runtime has reseeded the JDK's shared generators and before the copy
     * serves its first request. Hooks run in registration order; one that
     * throws makes thaw discard the copy. Generators the function made itself
     * (a java.util.Random, a SHA1PRNG SecureRandom) are reseeded here.
     */
    public static synchronized void onRestore(Runnable hook) {
        if (hook == null) throw new NullPointerException("onRestore(null)");
        HOOKS.add(hook);
    }

    /** True in a process restored from a snapshot, false in the original. */
    public static boolean isCopy() {
        return copy;
    }

    static synchronized List<Runnable> hooks() {
        return new ArrayList<>(HOOKS);
    }

    static void setCopy() {
        copy = true;
    }
}
