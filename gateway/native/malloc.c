// gridgate_malloc.node: hands the C heap's free memory back to the system. glibc keeps what a thread
// freed in that thread's malloc arena (and the main heap at its high-water mark) until malloc_trim()
// is called, and Node has no binding for it. gateway/heap-trim.ts calls trim() when the gateway goes
// quiet. Built by scripts/build-native.ts against Node-API only (no Node headers, no node-gyp).
#include <stdlib.h> // defines __GLIBC__ on glibc
#include <node_api.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

// trim() → true when memory was given back, false when there was none (or this is not glibc).
static napi_value trim (napi_env env, napi_callback_info info) {
  (void)info;
  int released = 0;
#if defined(__GLIBC__)
  released = malloc_trim(0);
#endif
  napi_value result;
  if (napi_get_boolean(env, released != 0, &result) != napi_ok) return NULL;
  return result;
}

NAPI_MODULE_INIT () {
  napi_value fn;
  napi_value supported;
#if defined(__GLIBC__)
  const bool glibc = true;
#else
  const bool glibc = false;
#endif
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != napi_ok) return NULL;
  if (napi_get_boolean(env, glibc, &supported) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "supported", supported) != napi_ok) return NULL;
  return exports;
}
