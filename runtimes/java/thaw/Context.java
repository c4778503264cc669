package thaw;

import java.util.Collections;
import java.util.Map;

/** What a handler learns about its invocation (the optional second argument). */
public final class Context {
    private final String invocationId;
    private final String function;
    private final String version;
    private final Long deadlineMs;
    private final Map<String, String> headers;

    Context(String invocationId, String function, String version, Long deadlineMs, Map<String, String> headers) {
        this.invocationId = invocationId;
        this.function = function;
        this.version = version;
        this.deadlineMs = deadlineMs;
        this.headers = Collections.unmodifiableMap(headers);
    }

    /** The invocation's id (also in the answer's x-thaw-invocation-id). */
    public String invocationId() { return invocationId; }

    /** The function's name. */
    public String function() { return function; }

    /** The function's version. */
    public String version() { return version; }

    /** Unix time in ms by which the answer is due, or null. */
    public Long deadlineMs() { return deadlineMs; }

    /** The HTTP request headers thaw passed on (lower-case names). */
    public Map<String, String> headers() { return headers; }

    /** Milliseconds left before the deadline (0 once past it), or -1 without one. */
    public long remainingMs() {
        if (deadlineMs == null) return -1;
        return Math.max(0, deadlineMs - System.currentTimeMillis());
    }

    @Override
    public String toString() {
        return "Context(invocationId=" + invocationId + ", function=" + function + ", version=" + version + ")";
    }
}
