/*
 * Linked into the better-sqlite3 addon built for the single executable with
 * -Wl,--wrap=stat64,--wrap=fstat64,--wrap=lstat64 (scripts/build-binary.ts): glibc 2.33 made
 * stat64/fstat64/lstat64 real symbols (GLIBC_2.33); older glibc only has __xstat64 and friends, which
 * every glibc still exports. Calling those keeps the addon loadable on glibc 2.28 like Node itself.
 * Also --wrap=_ZSt28__throw_bad_array_new_lengthv: g++ 11+ calls std::__throw_bad_array_new_length()
 * (GLIBCXX_3.4.29) for a new[] whose length overflows, newer than the libstdc++ Node itself needs
 * (GLIBCXX_3.4.21); std::__throw_bad_alloc() (GLIBCXX_3.4) throws the base class of the same error.
 */
#define _LARGEFILE64_SOURCE 1
#include <sys/stat.h>

#if defined(__x86_64__)
#  define GG_GLIBC_BASE "GLIBC_2.2.5"
#  define GG_STAT_VER 1 /* _STAT_VER_LINUX */
#elif defined(__aarch64__)
#  define GG_GLIBC_BASE "GLIBC_2.17"
#  define GG_STAT_VER 0 /* _STAT_VER_KERNEL, the generic Linux layout */
#else
#  error "sea-glibc-compat.c: x86_64 and aarch64 only"
#endif

extern int __xstat64 (int ver, const char *path, struct stat64 *buf);
extern int __fxstat64 (int ver, int fd, struct stat64 *buf);
extern int __lxstat64 (int ver, const char *path, struct stat64 *buf);
__asm__(".symver __xstat64,__xstat64@" GG_GLIBC_BASE);
__asm__(".symver __fxstat64,__fxstat64@" GG_GLIBC_BASE);
__asm__(".symver __lxstat64,__lxstat64@" GG_GLIBC_BASE);

#define GG_HIDDEN __attribute__((visibility("hidden")))

GG_HIDDEN int __wrap_stat64 (const char *path, struct stat64 *buf) { return __xstat64(GG_STAT_VER, path, buf); }
GG_HIDDEN int __wrap_fstat64 (int fd, struct stat64 *buf) { return __fxstat64(GG_STAT_VER, fd, buf); }
GG_HIDDEN int __wrap_lstat64 (const char *path, struct stat64 *buf) { return __lxstat64(GG_STAT_VER, path, buf); }

extern void _ZSt17__throw_bad_allocv (void) __attribute__((noreturn));
GG_HIDDEN __attribute__((noreturn)) void __wrap__ZSt28__throw_bad_array_new_lengthv (void) { _ZSt17__throw_bad_allocv(); }
