/*
 * reseed.node: lets thaw's Node.js runtime reseed OpenSSL in a copy restored
 * from a snapshot. A copy keeps the original's pid, so OpenSSL's fork check
 * never fires and its generators would repeat the original's output in every
 * copy (crypto.randomBytes, randomUUID, TLS keys). reseed(buffer) mixes the
 * buffer (thaw's seed and fresh /dev/urandom bytes) into the primary DRBG
 * with RAND_add and asks OpenSSL to reseed from the OS with RAND_poll; the
 * per-thread generators reseed from the primary on their next use.
 *
 * Built when the runtime is prepared (runtime.toml) with the host's C
 * compiler. The few Node-API and OpenSSL functions used are declared here
 * (C ABI, stable), and resolved from the node executable when loaded.
 */
#include <stdbool.h>
#include <stddef.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; /* napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);

extern napi_status napi_get_cb_info(napi_env env, napi_callback_info info, size_t *argc,
                                    napi_value *argv, napi_value *this_arg, void **data);
extern napi_status napi_get_buffer_info(napi_env env, napi_value value, void **data,
                                        size_t *length);
extern napi_status napi_create_function(napi_env env, const char *name, size_t length,
                                        napi_callback cb, void *data, napi_value *result);
extern napi_status napi_set_named_property(napi_env env, napi_value object, const char *name,
                                           napi_value value);
extern napi_status napi_get_boolean(napi_env env, bool value, napi_value *result);
extern napi_status napi_throw_type_error(napi_env env, const char *code, const char *msg);

extern void RAND_add(const void *buf, int num, double randomness);
extern int RAND_poll(void);
extern int RAND_status(void);

static napi_value reseed(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    void *data = NULL;
    size_t length = 0;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != 0 || argc < 1 ||
        napi_get_buffer_info(env, argv[0], &data, &length) != 0 || length == 0 ||
        length > 4096) {
        napi_throw_type_error(env, NULL, "reseed(buffer of 1..4096 bytes)");
        return NULL;
    }
    RAND_add(data, (int)length, (double)length);
    bool ok = RAND_poll() == 1 && RAND_status() == 1;
    napi_value result;
    napi_get_boolean(env, ok, &result);
    return result;
}

napi_value napi_register_module_v1(napi_env env, napi_value exports) {
    napi_value fn;
    if (napi_create_function(env, "reseed", 6, reseed, NULL, &fn) == 0) {
        napi_set_named_property(env, exports, "reseed", fn);
    }
    return exports;
}
