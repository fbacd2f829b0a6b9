/*
 * Force-included (-include) into every C and C++ file of the better-sqlite3 addon built for the
 * single executable (scripts/build-binary.ts). Building on a current glibc binds the addon to the
 * newest symbol versions (pthread_* and dl* at GLIBC_2.34 since libpthread/libdl moved into libc,
 * exp/log/pow/log2 at GLIBC_2.29), so it would not load on a system whose glibc is older than the
 * build machine's although the embedded Node runs there (Node 24 needs glibc 2.28). These directives
 * bind the same functions to their first version, which every glibc since the architecture's first
 * provides (in libpthread.so.0 and libdl.so.2 before 2.34, both loaded by Node itself).
 * stat64/fstat64/lstat64 (GLIBC_2.33) have no older version: sea-glibc-compat.c replaces them, and
 * std::__throw_bad_array_new_length (GLIBCXX_3.4.29).
 */
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#  if defined(__x86_64__)
#    define GG_GLIBC_BASE "GLIBC_2.2.5"
#  else
#    define GG_GLIBC_BASE "GLIBC_2.17"
#  endif
#  define GG_GLIBC_OLDEST(fn) __asm__(".symver " #fn "," #fn "@" GG_GLIBC_BASE);
GG_GLIBC_OLDEST(pthread_create)
GG_GLIBC_OLDEST(pthread_join)
GG_GLIBC_OLDEST(pthread_once)
GG_GLIBC_OLDEST(pthread_mutex_trylock)
GG_GLIBC_OLDEST(pthread_mutexattr_init)
GG_GLIBC_OLDEST(pthread_mutexattr_destroy)
GG_GLIBC_OLDEST(pthread_mutexattr_settype)
GG_GLIBC_OLDEST(dlopen)
GG_GLIBC_OLDEST(dlclose)
GG_GLIBC_OLDEST(dlsym)
GG_GLIBC_OLDEST(dlerror)
GG_GLIBC_OLDEST(exp)
GG_GLIBC_OLDEST(log)
GG_GLIBC_OLDEST(log2)
GG_GLIBC_OLDEST(pow)
#endif
