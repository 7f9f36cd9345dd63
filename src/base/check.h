// CLONE_CHECK: invariants that only a bug in Clone can break. Never use it on guest input.
#pragma once

#include <cstdio>
#include <cstdlib>

#define CLONE_CHECK(cond)                                                                                  \
  do {                                                                                                     \
    if (!(cond)) [[unlikely]] {                                                                            \
      std::fprintf(stderr, "clone: internal error: %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                        \
    }                                                                                                      \
  } while (0)
